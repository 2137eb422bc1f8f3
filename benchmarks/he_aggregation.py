"""HE aggregation cost: CKKS (TenSEAL, batched) vs element-wise Paillier, 10 sites x 1M float32.

CKKS runs the real secure-sum flow (``fedcare.he.secure_sum``): every site encrypts its
whole update (weight slot included) to wire bytes, the coordinator parses and adds all
of them with the public context, one site decrypts. Medians of --repeats runs, once per
TenSEAL ``n_threads`` setting, the settings interleaved so that noise hits both alike.

Paillier (phe, 2048-bit) encrypts one value per ciphertext, so 10 x 1M encryptions would
take hours: it is timed on --paillier-elements values per site (10 sites) and the times
are extrapolated linearly to --params, which the output says next to each figure. Its
cost is exactly linear in the element count (one modular exponentiation per encryption
and decryption, one multiplication per addition), so the extrapolation is faithful.

"End to end" = all sites' encryption (run one after another here) + the coordinator's
addition + one site's decryption; "critical path" = one site's encryption + addition +
decryption, the round's latency when sites encrypt in parallel on their own machines.

    python benchmarks/he_aggregation.py [--sites 10] [--params 1000000] [--repeats 3]
        [--threads 1 2] [--paillier-elements 2000] [--paillier-bits 2048]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from fedcare.he import HeCoordinator, HeSite, generate_keys, paillier
from fedcare.he.params import MAX_MODULUS_BITS_128

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@dataclass
class CkksRuns:
    encrypt: list[float] = field(default_factory=list)  # one entry per site and run
    add: list[float] = field(default_factory=list)
    decrypt: list[float] = field(default_factory=list)
    end_to_end: list[float] = field(default_factory=list)
    payload_bytes: int = 0
    aggregate_bytes: int = 0
    context_bytes: int = 0
    max_error: float = 0.0


def ckks_round(site: HeSite, updates: list[np.ndarray], runs: CkksRuns) -> None:
    context = site.public_context()
    payloads = []
    encrypt_times = []
    for delta in updates:
        payload, seconds = timed(lambda delta=delta: site.encrypt_update(delta, weight=1.0))
        payloads.append(payload)
        encrypt_times.append(seconds)
    coordinator = HeCoordinator(context, expected_length=updates[0].size, n_threads=None)
    aggregate, add_time = timed(lambda: coordinator.add(payloads))
    total, decrypt_time = timed(lambda: site.decrypt_aggregate(aggregate))
    plain = np.sum(np.stack(updates).astype(np.float64), axis=0)
    runs.encrypt += encrypt_times
    runs.add.append(add_time)
    runs.decrypt.append(decrypt_time)
    runs.end_to_end.append(sum(encrypt_times) + add_time + decrypt_time)
    runs.payload_bytes = len(payloads[0])
    runs.aggregate_bytes = len(aggregate)
    runs.context_bytes = len(context)
    runs.max_error = max(runs.max_error, float(np.max(np.abs(total - plain))))


@dataclass
class PaillierRun:
    encrypt_per_element: float
    add_per_element: float  # all sites' ciphertexts of one element
    decrypt_per_element: float
    bytes_per_element: int
    max_error: float


def paillier_round(sites: int, elements: int, key_bits: int) -> PaillierRun:
    public, private = paillier.generate_keypair(key_bits)
    gen = np.random.default_rng(1)
    updates = [gen.uniform(-1, 1, elements).astype(np.float32) for _ in range(sites)]
    encrypted, enc_time = timed(lambda: [paillier.encrypt_vector(public, u) for u in updates])
    total, add_time = timed(lambda: paillier.add_vectors(public, encrypted))
    values, dec_time = timed(lambda: paillier.decrypt_vector(private, total))
    plain = np.sum(np.stack(updates).astype(np.float64), axis=0)
    return PaillierRun(
        encrypt_per_element=enc_time / (sites * elements),
        add_per_element=add_time / elements,
        decrypt_per_element=dec_time / elements,
        bytes_per_element=len(encrypted[0].to_bytes(public)) / elements,
        max_error=float(np.max(np.abs(values - plain))),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--paillier-elements", type=int, default=2000)
    parser.add_argument("--paillier-bits", type=int, default=2048)
    args = parser.parse_args()
    med = statistics.median
    n, length = args.sites, args.params
    float_bytes = 4 * length

    gen = np.random.default_rng(0)
    updates = [gen.uniform(-1, 1, length).astype(np.float32) for _ in range(n)]
    threads = list(dict.fromkeys(args.threads))
    sites = {t: HeSite(generate_keys(n_threads=t), name=f"site-{t}") for t in threads}
    runs = {t: CkksRuns() for t in threads}
    ckks_round(sites[threads[0]], [u[:10_000] for u in updates[:2]], CkksRuns())  # warm-up
    for _ in range(args.repeats):
        for t in threads:
            ckks_round(sites[t], updates, runs[t])

    params = sites[threads[0]].keys.params
    print(
        f"CKKS (TenSEAL): N = {params.poly_modulus_degree}, coeff modulus "
        f"{list(params.coeff_mod_bit_sizes)} bits (128-bit security allows up to "
        f"{MAX_MODULUS_BITS_128[params.poly_modulus_degree]}), scale 2**{params.scale_bits}, "
        f"{params.slots} slots per ciphertext; {n} sites x {length:,} float32, "
        f"median of {args.repeats} runs"
    )
    print(
        f"  {'n_threads':<10}{'encrypt/site':>14}{'add (all)':>12}{'decrypt':>10}{'end to end':>12}"
    )
    for t in threads:
        r = runs[t]
        print(
            f"  {t:<10}{med(r.encrypt):>13.3f}s{med(r.add):>11.3f}s{med(r.decrypt):>9.3f}s"
            f"{med(r.end_to_end):>11.3f}s"
        )
    best = min(threads, key=lambda t: med(runs[t].end_to_end))
    r = runs[best]
    print(
        f"  n_threads only reaches TenSEAL's CKKSTensor element-wise ops; the CKKSVector "
        f"path runs on one thread either way. Figures below use n_threads = {best}."
    )
    print(
        f"  payload {r.payload_bytes / 2**20:.1f} MiB per site = "
        f"{r.payload_bytes / float_bytes:.2f}x float32 ({float_bytes / 2**20:.1f} MiB); "
        f"aggregate {r.aggregate_bytes / 2**20:.1f} MiB; public context "
        f"{r.context_bytes:,} bytes (once)"
    )
    print(f"  max |decrypted sum - float64 plain sum| = {r.max_error:.2e}")
    ckks_e2e = med(r.end_to_end)
    ckks_path = med(r.encrypt) + med(r.add) + med(r.decrypt)

    p = paillier_round(n, args.paillier_elements, args.paillier_bits)
    scale = length
    p_encrypt_site = p.encrypt_per_element * scale
    p_add = p.add_per_element * scale
    p_decrypt = p.decrypt_per_element * scale
    p_e2e = n * p_encrypt_site + p_add + p_decrypt
    p_path = p_encrypt_site + p_add + p_decrypt
    print(
        f"\nPaillier (phe, {args.paillier_bits}-bit, gmpy2 "
        f"{'on' if _has_gmpy2() else 'off'}): measured on {args.paillier_elements:,} "
        f"elements x {n} sites, EXTRAPOLATED linearly to {length:,} elements"
    )
    print(
        f"  encrypt/site {p_encrypt_site:,.0f}s  add (all) {p_add:,.0f}s  decrypt "
        f"{p_decrypt:,.0f}s  end to end {p_e2e:,.0f}s ({p_e2e / 3600:.1f} h)  [extrapolated]"
    )
    print(
        f"  {p.bytes_per_element:.0f} bytes per element = {p.bytes_per_element / 4:.0f}x "
        f"float32; max error on the subset {p.max_error:.2e}"
    )
    print(
        f"\nCKKS vs Paillier: end to end {p_e2e / ckks_e2e:,.0f}x faster, critical path "
        f"{p_path / ckks_path:,.0f}x faster (target >= 1,000x); ciphertext "
        f"{r.payload_bytes / float_bytes:.2f}x float32 vs {p.bytes_per_element / 4:.0f}x "
        f"(target <= 21x)"
    )


def _has_gmpy2() -> bool:
    try:
        import gmpy2  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
