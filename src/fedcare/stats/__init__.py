"""Federated statistics and survival analysis: exact answers from per-site sufficient statistics.

The coordinator asks (:class:`~fedcare.stats.protocol.Question`), every site answers from
its own rows under its disclosure rules (:class:`~fedcare.stats.protocol.Release`), the
answers are combined (summed, possibly by a secure sum, or kept per site) and the analysis
decides its next question or its result. Everything here is pure numpy: the simulator and
the deployed ``query`` job drive the same functions.
"""
