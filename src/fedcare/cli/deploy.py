"""``fedcare coordinator ...`` and ``fedcare site ...``: a study deployed across hospitals.

Coordinating centre::

    fedcare coordinator start --study study.yaml --bundle coordinator-bundle --ca study-ca
    fedcare coordinator status --out studies/NAME
    fedcare coordinator resume --out studies/NAME --bundle coordinator-bundle --ca study-ca

A deployed study runs every strategy x seed its YAML lists (or those chosen with
``--strategy``/``--seed``), one run after another, under one study plan that every data
owner approves once. What cannot deploy (baselines, simulated attacks, ...) is named before
anything starts and recorded in the study folder.

Each hospital::

    fedcare site start --coordinator HOST:PORT --bundle site-bundle --data heart-disease:cleveland \
        --budget-epsilon 10 --budget-delta 1e-4     # this dataset's privacy budget (kept)
    fedcare site start --coordinator HOST:PORT --bundle site-bundle --data our-patients.csv
    fedcare site approve HASH

When a run finishes (or on ``fedcare coordinator status --out studies/NAME --report``) the
study folder gets what a simulated study writes: metrics.json, metrics.csv, report.html,
config.yaml and models/ (see :mod:`fedcare.study.deployed`).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fedcare.cli.errors import friendly_errors
from fedcare.core.errors import ConfigError, FedcareError

coordinator_app: typer.Typer = typer.Typer(
    help="Run a study's coordinator (coordinating centre).", no_args_is_help=True
)
site_app: typer.Typer = typer.Typer(
    help="Run a hospital's site agent and approve job plans.", no_args_is_help=True
)

console = Console(width=None if sys.stdout.isatty() else 160)


DEFAULT_ADDRESS = "0.0.0.0:50051"

# Options the coordinator's start and resume share.
ChunkMiB = Annotated[float, typer.Option(help="Streaming chunk size in MiB.")]
DEFAULT_CHUNK_MIB = 1.0  # fedcare.net.serde.DEFAULT_CHUNK_BYTES (net is imported lazily)
MaxModelGiB = Annotated[float, typer.Option(help="Largest vector accepted, GiB.")]
Insecure = Annotated[
    bool, typer.Option("--insecure", help="Plain text on loopback, for tests only.")
]
PortFile = Annotated[Path | None, typer.Option(help="Write the bound port here (with port 0).")]
DEFAULT_SITE_DIR = Path(".fedcare-site")


def _log(text: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    console.print(f"[dim]{stamp}[/] {text}", highlight=False, soft_wrap=True)


# Runtime lines that must stand out (see fedcare.net.coordinator_server.WARNING/STOPPED).
LOUD_PREFIXES = {"WARNING: ": "bold yellow", "STOPPED: ": "bold red"}


def _plain_log(text: str) -> None:
    """For messages from the runtime: text in brackets (a found value, a list of columns)
    is printed as is, never taken for console markup; warnings and stops in colour."""
    from rich.markup import escape

    for prefix, style in LOUD_PREFIXES.items():
        if text.startswith(prefix):
            _log(f"[{style}]{escape(text)}[/]")
            return
    _log(escape(text))


def _limits(chunk_mib: float, max_model_gib: float) -> Any:
    from fedcare.net.channel import TransportLimits

    return TransportLimits(
        chunk_bytes=int(chunk_mib * (1 << 20)), max_vector_bytes=int(max_model_gib * (1 << 30))
    )


def _listen_address(address: str, insecure: bool) -> str:
    """``--address`` checked (host syntax, port 0-65535) and, with ``--insecure``, on
    loopback: refused here, before the study folder is touched."""
    from fedcare.net.address import check_can_listen, parse_address

    parsed = parse_address(address, "--address", any_port=True)
    _insecure_on_loopback(parsed.host, "--address", insecure)
    check_can_listen(parsed, "--address")
    return str(parsed)


def _insecure_on_loopback(host: str, option: str, insecure: bool) -> None:
    from fedcare.net.channel import is_loopback

    if insecure and not is_loopback(host):
        raise ConfigError(
            f"--insecure is only allowed on loopback (localhost, 127.0.0.1, ::1); {option} "
            f"names '{host}': use the study certificates instead"
        )


def _security(bundle: Path | None, ca: Path | None, insecure: bool) -> Any:
    from fedcare.net.coordinator_server import Security
    from fedcare.net.tls import REVOKED, TlsBundle

    if insecure:
        return Security(None)
    if bundle is None:
        raise ConfigError(
            "--bundle is required (the coordinator's bundle), or --insecure on loopback"
        )
    revoked = ca / REVOKED if ca is not None else None
    if revoked is not None and not revoked.is_file():
        raise ConfigError(f"--ca '{ca}' has no {REVOKED}; pass the study CA folder")
    loaded = TlsBundle.load(bundle)
    if loaded.role != "coordinator":
        raise ConfigError(
            f"bundle '{bundle}' is a {loaded.role} bundle; the coordinator needs its own"
        )
    return Security(loaded, revoked)


def _choose_strategy(config: Any, strategy: str | None) -> Any:
    if not config.strategies:
        raise ConfigError(f"study '{config.name}' lists no strategies to deploy")
    if strategy is None:
        return config.strategies[0]
    matches = [s for s in config.strategies if strategy in (s.display_name, s.name)]
    if not matches:
        names = ", ".join(s.display_name for s in config.strategies)
        raise ConfigError(f"study has no strategy '{strategy}'; it has: {names}")
    return matches[0]


def _tabular_sites(config: Any) -> tuple[tuple[str, ...], Any, dict[str, Any]]:
    """(sites, table spec, dataset facts) of a study on hospitals' own tables.

    The sites are the keys of ``dataset.params.files`` (the paths there are the simulator's;
    each hospital names its own file with ``--data``). Numeric features are z-scored at each
    site with its own training rows: no statistic about a hospital's rows is shared.
    """
    from fedcare.data.site_table import SiteTableSpec

    params = dict(config.dataset.params)
    files = params.get("files")
    if not isinstance(files, dict) or not files:
        raise ConfigError(
            "tabular dataset: 'params.files' must name the sites (site: file); in deployment "
            "only the names are used, each hospital gives its own file with --data"
        )
    spec = SiteTableSpec.from_study(params)
    facts = {
        "name": "tabular",
        "description": f"Hospitals' own tables from {len(files)} sites, checked against the "
        f"schema {spec.hash[:16]}… and encoded at each site (per-site normalisation)",
        "source": "user-provided data",
    }
    return tuple(str(s) for s in files), spec, facts


@dataclass(frozen=True)
class _Data:
    """What every run plan of a study says about its data."""

    sites: tuple[str, ...]
    input_shape: tuple[int, ...]
    num_classes: int
    data: dict[str, Any]  # a hospital's own table: schema, feature space, split
    facts: dict[str, Any]  # name, description, source, for the study folder
    table: dict[str, Any] | None = None  # a hospital's own table: the study's dataset.params

    def for_seed(self, seed: int) -> dict[str, Any]:
        """The plan's data section for the run with ``seed``: its split is the simulator's
        for that seed (the run seed, unless the study or schema pins one)."""
        if self.table is None:
            return self.data
        from fedcare.data.site_table import SiteTableSpec

        return dict(SiteTableSpec.from_study(self.table, run_seed=seed).to_dict())


_SURVIVAL_NOT_DEPLOYED = (
    "survival training (the Cox loss, C-index evaluation) runs in the simulator only for now: "
    "run `fedcare simulate` on this study, or `fedcare analyze` for a deployed Kaplan-Meier / "
    "Cox query; deployed site agents train classification tasks"
)


def _study_data(config: Any) -> _Data:
    if config.dataset.name == "tabular":
        sites, spec, facts = _tabular_sites(config)
        if spec.schema.target is None:
            raise ConfigError(f"study '{config.name}': {_SURVIVAL_NOT_DEPLOYED}")
        table = dict(config.dataset.params)
        return _Data(sites, (spec.num_features,), spec.num_classes, spec.to_dict(), facts, table)
    from fedcare.data.registry import load_dataset

    dataset = load_dataset(config.dataset.name, **config.dataset.params)
    if dataset.task == "survival":
        raise ConfigError(
            f"study '{config.name}' on dataset '{dataset.name}': {_SURVIVAL_NOT_DEPLOYED}"
        )
    facts = {"name": dataset.name, "description": dataset.description, "source": dataset.source}
    return _Data(
        tuple(dataset.site_names), tuple(dataset.input_shape), dataset.num_classes, {}, facts
    )


def _run_plan(
    config: Any, chosen: Any, seed: int, data: _Data, rounds: int | None, min_sites: int | None
) -> Any:
    """One run: one strategy of the study at one seed (the run's seed is the plan's)."""
    from fedcare.runtime.rounds import RunPlan
    from fedcare.runtime.sampling import Participation

    local = chosen.local or config.local
    part = config.participation
    return RunPlan(
        sites=data.sites,
        strategy=chosen.name,
        strategy_params=dict(chosen.params),
        spec=local.to_spec(),
        rounds=rounds or config.rounds,
        seed=seed,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        model=config.model.name,
        model_params=dict(config.model.params),
        participation=Participation(part.fraction, min_sites or part.min_sites),
        eval_every=config.simulator.eval_every,
        study=config.name,
        dataset=str(data.facts["name"]),
        data=data.for_seed(seed),
    )


def plan_and_facts(
    config: Any, strategy: str | None, seed: int | None, rounds: int | None, min_sites: int | None
) -> tuple[Any, Any, dict[str, Any]]:
    """(plan, chosen strategy config, dataset facts) of one run: one strategy, one seed."""
    chosen = _choose_strategy(config, strategy)
    data = _study_data(config)
    seed = config.seeds[0] if seed is None else seed
    return _run_plan(config, chosen, seed, data, rounds, min_sites), chosen, data.facts


def plan_from_study(
    config: Any, strategy: str | None, seed: int | None, rounds: int | None, min_sites: int | None
) -> Any:
    """One deployed run = one strategy and one seed of a study config."""
    return plan_and_facts(config, strategy, seed, rounds, min_sites)[0]


def not_deployed(config: Any, data_shape: Sequence[int]) -> list[str]:
    """The parts of a study config that only the simulator runs, each with why."""
    out = []
    if config.baselines:
        out.append(
            f"baselines ({', '.join(config.baselines)}): they train on one site's rows alone "
            "or on every site's rows pooled in one place, outside the federated protocol; run "
            "them with 'fedcare simulate'"
        )
    if config.attack is not None:
        out.append(
            f"attack ({config.attack.kind}): simulated poisoned sites exist only in the simulator"
        )
    if config.contributions is not None:
        out.append(
            "contributions (Shapley values, leave-one-out): they train a model for every "
            "coalition of sites, in simulation only"
        )
    if config.epsilon_sweep is not None:
        label = config.epsilon_sweep.strategy.label or config.epsilon_sweep.strategy.name
        out.append(
            f"epsilon_sweep ({label} at {len(config.epsilon_sweep.epsilons)} epsilons): a "
            "simulated privacy-utility curve; list a DP strategy under 'strategies' to deploy it"
        )
    if config.explain and len(data_shape) == 1:
        out.append(
            "explain (permutation feature importance): it would need an extra evaluation step "
            "at every site; simulation only"
        )
    return out


@dataclass(frozen=True)
class StudySelection:
    """The runs a deployed study will serve, in order, and what it leaves out."""

    plan: Any  # fedcare.runtime.rounds.StudyPlan
    labels: tuple[str, ...]  # each run's strategy label
    facts: dict[str, Any]

    @property
    def not_deployed(self) -> tuple[str, ...]:
        return tuple(self.plan.not_deployed)


def _selected(config: Any, names: Sequence[str] | None) -> tuple[list[Any], list[str]]:
    """The strategies to deploy, and a line for each one left out (with why)."""
    if not config.strategies:
        raise ConfigError(f"study '{config.name}' lists no strategies to deploy")
    if names:
        chosen = [_choose_strategy(config, n) for n in names]
        unique = list({id(c): c for c in chosen}.values())
        rest = [s.display_name for s in config.strategies if all(s is not c for c in unique)]
        skipped = [f"strategies not chosen with --strategy: {', '.join(rest)}"] if rest else []
        return unique, skipped
    return list(config.strategies), []


def study_from_config(
    config: Any,
    strategies: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    rounds: int | None = None,
    min_sites: int | None = None,
) -> StudySelection:
    """Every strategy x seed of the study (or those chosen), strategy by strategy, as one
    study plan. A listed strategy that cannot deploy is left out and named; one chosen
    with ``--strategy`` that cannot deploy is an error."""
    from fedcare.runtime.rounds import StudyPlan

    data = _study_data(config)
    chosen, left_out = _selected(config, strategies)
    runs, labels = [], []
    for strategy in chosen:
        try:
            _run_plan(config, strategy, 0, data, rounds, min_sites).build_strategy()
        except ConfigError as exc:
            if strategies:
                raise
            left_out.append(f"strategy '{strategy.display_name}': {exc}")
            continue
        for seed in seeds or config.seeds:
            runs.append(_run_plan(config, strategy, seed, data, rounds, min_sites))
            labels.append(strategy.display_name)
    if not runs:
        raise ConfigError(
            f"study '{config.name}': none of its strategies can deploy: " + "; ".join(left_out)
        )
    left_out = not_deployed(config, data.input_shape) + left_out
    return StudySelection(
        StudyPlan(config.name, tuple(runs), tuple(left_out)), tuple(labels), data.facts
    )


def initial_model(plan: Any) -> Any:
    """The simulator's initial model for this plan's seed (same draw, same layout)."""
    from fedcare.core.seeds import SeedStream
    from fedcare.models.registry import build_model
    from fedcare.sim.engine import initial_params

    module = build_model(plan.model, plan.input_shape, plan.num_classes, **plan.model_params)
    return initial_params(module, SeedStream(plan.seed))


def _serve_limits(limits: Any, driver: Any) -> Any:
    if limits.inflight_bytes == 1 << 30:  # default: one model reassembled at a time
        from dataclasses import replace

        limits = replace(limits, inflight_bytes=max(int(driver.machine.size) * 4, 64 << 20))
    return limits


def _ready(port_file: Path | None) -> Any:
    def ready(port: int) -> None:
        if port_file is not None:
            port_file.write_text(str(port))

    return ready


def _serve(driver: Any, address: str, insecure: bool, limits: Any, port_file: Path | None) -> None:
    """Serve one run started on its own (by an older fedcare, outside a study file)."""
    from fedcare.net.coordinator_server import serve

    limits = _serve_limits(limits, driver)
    outcome = serve(driver, address, limits=limits, insecure=insecure, ready=_ready(port_file))
    if outcome.status in ("finished", "failed"):
        _write_study_folder(driver.folder)
    if outcome.status != "finished":
        raise FedcareError(f"run {outcome.run_id} {outcome.status}: {outcome.failure or 'stopped'}")
    console.print(
        f"Run [bold]{outcome.run_id}[/] finished after {outcome.rounds} rounds; results in "
        f"{driver.folder / 'deploy' / outcome.run_id}"
    )


@dataclass(frozen=True)
class _Serving:
    """Where and how a study's runs are served."""

    folder: Path
    security: Any
    address: str
    insecure: bool
    limits: Any
    port_file: Path | None


def _new_study_run(where: _Serving, deployed: Any, index: int, init: Any = None) -> Any:
    """Register run ``index`` of the study and its driver (initial model kept for resume;
    ``init``: that model, when it was built before anything was written)."""
    from fedcare.net.coordinator_server import new_run, save_initial

    plan, run_id = deployed.plan.runs[index], deployed.run_ids[index]
    init = initial_model(plan) if init is None else init
    driver = new_run(
        where.folder,
        run_id,
        plan,
        init,
        where.security,
        deployed.options,
        log=_plain_log,
        study=deployed.run_about(index),
        study_plan=deployed.plan,
    )
    save_initial(where.folder, run_id, init)
    return driver


def _serve_study(where: _Serving, deployed: Any, first: Any, todo: Sequence[int]) -> None:
    """Serve the runs ``todo`` (indices into the study, in order) one after another on one
    port, starting with ``first`` (the driver of ``todo[0]``); then write the study folder."""
    from fedcare.net.coordinator_server import serve_runs

    total, queue = len(deployed.run_ids), list(todo[1:])

    def next_run(outcome: Any) -> Any:
        if not queue:
            return None
        index = queue.pop(0)
        plan = deployed.plan.runs[index]
        _log(
            f"run [bold]{outcome.run_id}[/] finished; run {index + 1} of {total}: "
            f"[bold]{deployed.run_ids[index]}[/] ({deployed.labels[index]}, seed {plan.seed})"
        )
        return _new_study_run(where, deployed, index)

    outcomes = serve_runs(
        first,
        where.address,
        next_run,
        limits=_serve_limits(where.limits, first),
        insecure=where.insecure,
        ready=_ready(where.port_file),
    )
    if any(o.status in ("finished", "failed") for o in outcomes):
        _write_study_folder(where.folder)
    last = outcomes[-1]
    if last.status != "finished":
        done = sum(1 for o in outcomes if o.status == "finished")
        raise FedcareError(
            f"run {last.run_id} {last.status}: {last.failure or 'stopped'}; study "
            f"'{deployed.plan.study}' stopped with {done} of {len(todo)} remaining run(s) "
            f"finished (continue it: fedcare coordinator resume --out {where.folder} ...)"
        )
    console.print(
        f"Study [bold]{deployed.plan.study}[/]: {len(outcomes)} run(s) finished "
        f"({', '.join(o.run_id for o in outcomes)}); results in {where.folder}"
    )


def _run_ids(selection: StudySelection, given: str | None) -> tuple[str, ...]:
    """``--run-id`` for a one-run study, ``ID-1``, ``ID-2``... for more; else label-sSEED-tag."""
    count = len(selection.labels)
    if given is not None:
        return (given,) if count == 1 else tuple(f"{given}-{i + 1}" for i in range(count))
    tag = secrets.token_hex(3)
    return tuple(
        f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', label).strip('-') or 'run'}-s{run.seed}-{tag}"
        for label, run in zip(selection.labels, selection.plan.runs, strict=True)
    )


def _announce(deployed: Any) -> None:
    """Before anything starts: what is left out, and the study plan the owners approve."""
    from rich.markup import escape

    study = deployed.plan
    for line in study.not_deployed:
        _log(f"[yellow]not deployed[/]: {escape(line)}")
    _log(
        f"study [bold]{escape(study.study)}[/]: {len(study.runs)} run(s), one after another, "
        f"at sites {', '.join(study.sites)}; study plan hash [bold]{study.hash}[/] (each data "
        f"owner approves the whole study once with: fedcare site approve {study.hash})"
    )
    for run_id, line in zip(deployed.run_ids, study.describe(), strict=True):
        _log(f"  {escape(line)}: run {run_id}")


def _write_study_folder(folder: Path) -> Path | None:
    """metrics.json, report.html and models/ from the folder's finished runs (a problem
    writing them is reported, never turns a finished run into a failed command)."""
    from fedcare.study.deployed import write_deployed_study

    try:
        report = write_deployed_study(folder)
    except FedcareError as exc:
        from rich.markup import escape

        _log(f"[yellow]study results not written[/]: {escape(str(exc))}")
        return None
    if report is not None:
        _log(f"study results: {folder / 'metrics.json'}, {report}")
    return report


@coordinator_app.command("start")
@friendly_errors
def coordinator_start(
    study: Annotated[Path, typer.Option(help="Study YAML (the same file the simulator runs).")],
    bundle: Annotated[Path | None, typer.Option(help="The coordinator's bundle folder.")] = None,
    ca: Annotated[
        Path | None, typer.Option(help="Study CA folder (its revoked.json is honoured).")
    ] = None,
    address: Annotated[str, typer.Option(help="HOST:PORT to listen on.")] = DEFAULT_ADDRESS,
    out: Annotated[
        Path | None,
        typer.Option(help="Study folder (default: the config's output or studies/NAME)."),
    ] = None,
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            help="Deploy only this strategy (label or name); repeat for several. Default: "
            "every strategy the study lists."
        ),
    ] = None,
    seed: Annotated[
        list[int] | None,
        typer.Option(
            help="Deploy only this seed; repeat for several. Default: every seed the study lists."
        ),
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Override the number of rounds.")
    ] = None,
    min_sites: Annotated[
        int | None, typer.Option(min=1, help="Fewest updates a round needs.")
    ] = None,
    round_timeout: Annotated[
        float, typer.Option(help="Seconds a site has to answer a round.")
    ] = 600.0,
    start_grace: Annotated[
        float,
        typer.Option(help="Seconds to wait for absent sites before starting a round without them."),
    ] = 60.0,
    approval_timeout: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Seconds a connected site's data owner has to approve the plan (from when it "
            "reached the site). Until then no round starts without that site; after it, "
            "rounds go on without it and say so.",
        ),
    ] = 3600.0,
    max_update_norm: Annotated[
        float | None, typer.Option(help="Reject updates with a larger L2 norm.")
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(help="Run id (default: generated); a study of n runs gets ID-1 ... ID-n."),
    ] = None,
    chunk_mib: ChunkMiB = DEFAULT_CHUNK_MIB,
    max_model_gib: MaxModelGiB = 8.0,
    insecure: Insecure = False,
    port_file: PortFile = None,
) -> None:
    """Deploy a study: every strategy x seed it lists, one run after another, under one
    study plan each data owner approves once."""
    from fedcare.net.storage_checks import check_study_folder
    from fedcare.net.study_files import DeployedStudy, save_study
    from fedcare.runtime.coordinator import CoordinatorOptions
    from fedcare.study.config import load_config
    from fedcare.study.deployed import refuse_simulated_folder

    # Everything is checked before anything is written: a refused start leaves the study
    # folder as it was (no plan files, no runs.db row, no audit entry).
    address = _listen_address(address, insecure)
    from fedcare.cli.analyze import deploy_query, is_analysis_file

    if is_analysis_file(study):  # an analysis YAML (fedcare analyze) deploys as a query job
        training: dict[str, object] = {"strategy": strategy, "seed": seed, "rounds": rounds}
        training |= {"min_sites": min_sites, "max_update_norm": max_update_norm}
        training |= {  # set away from their defaults: options of training rounds
            "round_timeout": round_timeout != 600.0,
            "start_grace": start_grace != 60.0,
            "approval_timeout": approval_timeout != 3600.0,
            "chunk_mib": chunk_mib != DEFAULT_CHUNK_MIB,
            "max_model_gib": max_model_gib != 8.0,
        }
        security = _security(bundle, ca, insecure)
        deploy_query(
            study, security, address, out, run_id=run_id, insecure=insecure,
            port_file=port_file, ignored=training,
        )  # fmt: skip
        return
    cfg = load_config(study)
    folder = out or Path(cfg.output or f"studies/{cfg.name}")
    _check_folder(folder)
    refuse_simulated_folder(folder)  # before anything is written
    check_study_folder(folder)
    security = _security(bundle, ca, insecure)
    limits = _limits(chunk_mib, max_model_gib)
    selection = study_from_config(cfg, strategy, seed, rounds, min_sites)
    first_model = initial_model(selection.plan.runs[0])  # the model builds (or says why)
    options = CoordinatorOptions(
        round_timeout_s=round_timeout,
        start_grace_s=start_grace,
        approval_timeout_s=approval_timeout,
        max_update_norm=max_update_norm,
    )
    if cfg.dataset.name == "tabular" and cfg.dataset.params.get("normalise", "site") != "site":
        _log(
            "[yellow]note[/]: the study sets dataset.params.normalise: pooled, which only the "
            "simulator can run; deployed, each site z-scores its features with its own "
            "training rows (no statistic leaves a hospital), so results will differ from the "
            "simulated ones. Drop the key (default: site) to simulate exactly what deploys"
        )
    about = {
        "config": cfg.model_dump(mode="json"),
        "dataset": selection.facts,
        "not_deployed": list(selection.not_deployed),
    }
    deployed = DeployedStudy(
        selection.plan, _run_ids(selection, run_id), selection.labels, options, about
    )
    save_study(folder, deployed)
    _announce(deployed)
    where = _Serving(folder, security, address, insecure, limits, port_file)
    todo = range(len(deployed.run_ids))
    _serve_study(where, deployed, _new_study_run(where, deployed, 0, first_model), todo)


def _check_folder(folder: Path) -> None:
    """The study folder is a folder (or can become one) that this user may write."""
    import os

    existing = next((p for p in (folder, *folder.absolute().parents) if p.exists()), None)
    if existing is None:
        return
    if existing == folder and not folder.is_dir():
        raise ConfigError(f"study folder '{folder}' is a file, not a folder")
    if existing != folder and not existing.is_dir():
        raise ConfigError(f"study folder '{folder}': '{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"study folder '{folder}': '{existing}' is not writable by this user")


@coordinator_app.command("resume")
@friendly_errors
def coordinator_resume(
    out: Annotated[Path, typer.Option(help="The study folder of the run.")],
    run: Annotated[
        str | None,
        typer.Argument(
            help="Run id to continue (default: where the folder's latest study stopped)."
        ),
    ] = None,
    bundle: Annotated[Path | None, typer.Option(help="The coordinator's bundle folder.")] = None,
    ca: Annotated[
        Path | None, typer.Option(help="Study CA folder (its revoked.json is honoured).")
    ] = None,
    address: Annotated[str, typer.Option(help="HOST:PORT to listen on.")] = DEFAULT_ADDRESS,
    chunk_mib: ChunkMiB = DEFAULT_CHUNK_MIB,
    max_model_gib: MaxModelGiB = 8.0,
    insecure: Insecure = False,
    port_file: PortFile = None,
) -> None:
    """Continue a deployed study after the coordinator stopped or crashed: the unfinished
    run from its last checkpoint, then the study's runs that had not started."""
    from fedcare.net.coordinator_server import resume_run
    from fedcare.net.storage_checks import check_study_folder
    from fedcare.net.study_files import load_studies, study_of_run

    address = _listen_address(address, insecure)
    check_study_folder(out)
    security, limits = _security(bundle, ca, insecure), _limits(chunk_mib, max_model_gib)
    deployed = study_of_run(out, run) if run else next(reversed(load_studies(out)), None)
    if deployed is None:
        if run is None:
            raise ConfigError(
                f"'{out}' holds no deployed study (no deploy/study-*.json); name the run to "
                "continue: fedcare coordinator resume RUN --out ..."
            )
        driver = resume_run(out, run, security, log=_plain_log)  # a run started on its own
        _serve(driver, address, insecure, limits, port_file)
        return
    statuses = _statuses(out)
    if all(statuses.get(r) == "finished" for r in deployed.run_ids):
        # Stopped after the study's last run ended: resuming is a no-op (idempotent, so a
        # supervisor may restart the coordinator blindly), except for results not written.
        _log(f"every run of study '{deployed.plan.study}' has finished; nothing to resume")
        if not (out / "metrics.json").is_file():
            _write_study_folder(out)
        return
    todo = _unfinished(out, deployed, run)
    index = todo[0]
    where = _Serving(out, security, address, insecure, limits, port_file)
    if index in _started(out, deployed):
        first = resume_run(out, deployed.run_ids[index], security, _plain_log, deployed.plan)
    else:
        _log(f"starting run {deployed.run_ids[index]}, the next of the study")
        first = _new_study_run(where, deployed, index)
    _log(
        f"study [bold]{deployed.plan.study}[/] ({deployed.plan.hash}): {len(todo)} of "
        f"{len(deployed.run_ids)} run(s) left: {', '.join(deployed.run_ids[i] for i in todo)}"
    )
    _serve_study(where, deployed, first, todo)


def _statuses(folder: Path) -> dict[str, str]:
    from fedcare.net.store import RunStore

    if not (folder / "runs.db").is_file():
        return {}
    with RunStore.in_folder(folder) as store:
        return {r.run_id: r.status for r in store.runs()}


def _started(folder: Path, deployed: Any) -> set[int]:
    statuses = _statuses(folder)
    return {i for i, run_id in enumerate(deployed.run_ids) if run_id in statuses}


def _unfinished(folder: Path, deployed: Any, run: str | None) -> list[int]:
    """Indices of the study's runs still to serve, in order (ConfigError if none)."""
    statuses = _statuses(folder)
    ended = {"finished", "failed"}
    todo = [i for i, r in enumerate(deployed.run_ids) if statuses.get(r) not in ended]
    if not todo:
        states = ", ".join(f"{r} {statuses.get(r)}" for r in deployed.run_ids)
        raise ConfigError(
            f"study '{deployed.plan.study}' in '{folder}': every run has ended ({states}); "
            "nothing to resume"
        )
    failed = [r for r in deployed.run_ids if statuses.get(r) == "failed"]
    if failed:
        _log(f"[yellow]failed run(s) stay failed[/]: {', '.join(failed)} (see coordinator status)")
    if run is not None and statuses.get(run) in ended:
        _log(f"run {run} has {statuses[run]}; continuing with the study's next run")
    return todo


@coordinator_app.command("status")
@friendly_errors
def coordinator_status(
    out: Annotated[Path, typer.Option(help="The study folder.")],
    run: Annotated[
        str | None, typer.Argument(help="One run in detail (default: the latest).")
    ] = None,
    report: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Also (re)write the study folder from the finished runs: metrics.json, "
            "metrics.csv, report.html, config.yaml, models/.",
        ),
    ] = False,
) -> None:
    """Runs, rounds, who contributed, metrics, and which sites wait for approval."""
    from fedcare.net.store import RunStore

    if not (out / "runs.db").is_file():
        raise FileNotFoundError(f"{out / 'runs.db'}: no deployed runs in this folder")
    _print_status(RunStore, out, run)
    if report:
        from fedcare.study.deployed import write_deployed_study

        written = write_deployed_study(out)
        if written is None:
            console.print("no run has finished yet: nothing to report")
        else:
            console.print(f"wrote {out / 'metrics.json'} and {written}", highlight=False)


def _print_status(store_type: Any, out: Path, run: str | None) -> None:
    with store_type.in_folder(out) as store:
        runs = store.runs()
        table = Table(title=f"runs in {out}")
        for col in ("run", "status", "plan hash", "rounds done", "rounds short"):
            table.add_column(col)
        for r in runs:
            done = [x for x in store.rounds(r.run_id) if x.status == "finished"]
            short = sum(1 for x in done if x.missing())
            table.add_row(
                r.run_id,
                r.status,
                r.plan_hash[:16],
                str(len(done)),
                f"[bold yellow]{short}[/]" if short else "0",
            )
        console.print(table)
        if not runs:
            return
        chosen = store.run(run) if run else runs[-1]
        rounds = Table(title=f"rounds of {chosen.run_id}")
        for col in ("round", "status", "contributed", "dropped / rejected", "pooled accuracy"):
            rounds.add_column(col)
        for x in store.rounds(chosen.run_id):
            left_out = [
                f"{p.site} ({p.status}: {p.reason})"
                for p in x.participants
                if p.status in ("dropped", "rejected")
            ]
            acc = x.metrics.get("pooled_metrics", {}).get("accuracy")
            rounds.add_row(
                str(x.round + 1),
                x.status,
                ", ".join(x.by_status("contributed")),
                "; ".join(left_out),
                "-" if acc is None else f"{acc:.3f}",
            )
        console.print(rounds)
        _print_short_rounds(store, chosen.run_id)
        sites = Table(title="sites")
        for col in ("site", "status", "detail"):
            sites.add_column(col)
        for s in store.sites(chosen.run_id):
            sites.add_row(s.site, s.status, s.detail)
        console.print(sites)
        waiting = [s.site for s in store.sites(chosen.run_id) if s.status == "waiting for approval"]
        if waiting:
            console.print(
                f"waiting for approval ({_approval_command(out, chosen)}): {', '.join(waiting)}",
                highlight=False,
            )


def _approval_command(out: Path, run: Any) -> str:
    """What an owner types: a run of a study is approved by the study's hash, not its own."""
    from fedcare.net.run_files import read_plan_file

    try:
        study_hash = read_plan_file(out, run.run_id).get("study", {}).get("study_hash")
    except (ConfigError, OSError, ValueError):
        study_hash = None
    return f"fedcare site approve {study_hash or run.plan_hash}"


def _print_short_rounds(store: Any, run_id: str) -> None:
    """Loud lines: each round of the run that ran short and why; why the run stopped."""
    from rich.markup import escape

    from fedcare.net.coordinator_server import short_round_line

    for x in store.rounds(run_id):
        short = x.short()
        if short is not None:
            console.print(f"[bold yellow]{escape(short_round_line(short))}[/]")
    for ev in store.events(run_id, "run_failed"):
        console.print(f"[bold red]run {run_id} failed: {escape(str(ev.detail.get('reason')))}[/]")


TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def _is_table(spec: str) -> bool:
    """``--data`` names a hospital's own file (vs ``DATASET:SITE``)."""
    return Path(spec).suffix.lower() in TABLE_SUFFIXES


def _site_data(spec: str) -> Any:
    """``DATASET:SITE`` for a dataset that ships with fedcare, checked before anything runs."""
    from fedcare.core.errors import DataValidationError
    from fedcare.data.registry import load_dataset
    from fedcare.runtime.site import DataCheck

    name, sep, site = spec.partition(":")
    if not sep or not site:
        raise ConfigError(
            f"--data must be DATASET:SITE (e.g. heart-disease:cleveland), found '{spec}'"
        )
    try:
        dataset = load_dataset(name)
    except DataValidationError as exc:
        return None, DataCheck(False, {}, [str(exc)])
    by_name = {s.name: s for s in dataset.sites}
    if site not in by_name:
        raise ConfigError(f"dataset '{name}' has no site '{site}'; sites: {', '.join(by_name)}")
    data = by_name[site]
    problems = []
    if data.num_train == 0:
        problems.append(f"site '{site}': no training rows")
    summary = {
        "dataset": name,
        "num_train": data.num_train,
        "num_test": data.num_test,
        "num_features": int(data.x_train.shape[1]) if data.x_train.ndim > 1 else 0,
    }
    return data, DataCheck(not problems, summary, problems)


@site_app.command("start")
@friendly_errors
def site_start(
    coordinator: Annotated[str, typer.Option(help="HOST:PORT of the coordinator.")],
    data: Annotated[
        str,
        typer.Option(
            help="This site's data: a CSV or Parquet file (checked against the study schema "
            "the job plan carries), or DATASET:SITE for a dataset shipped with fedcare."
        ),
    ],
    bundle: Annotated[Path | None, typer.Option(help="This site's bundle folder.")] = None,
    state: Annotated[
        Path, typer.Option(help="Site folder: approvals, algorithm state, audit copy.")
    ] = DEFAULT_SITE_DIR,
    name: Annotated[
        str | None,
        typer.Option(help="Site name (only with --insecure; else from the certificate)."),
    ] = None,
    budget_epsilon: Annotated[
        float | None,
        typer.Option(
            help="Privacy budget (epsilon) of this dataset, recorded in the site's ledger the "
            "first time; plans that would exceed what is left are refused."
        ),
    ] = None,
    budget_delta: Annotated[
        float | None, typer.Option(help="Privacy budget (delta), with --budget-epsilon.")
    ] = None,
    he_keys: Annotated[
        Path | None,
        typer.Option(
            "--he-keys",
            help="The CKKS key set the hospitals share (plans with secure: encrypt); made "
            "with 'fedcare site he-keys create', never given to the coordinator.",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Training threads (default: one per core). Give 1 when several site agents "
            "share one machine, as in a loopback test.",
        ),
    ] = None,
    give_up_after: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="Minutes to keep retrying while the coordinator cannot be reached; then "
            "the agent stops (exit 2) and can be started again later.",
        ),
    ] = 30.0,
    chunk_mib: ChunkMiB = DEFAULT_CHUNK_MIB,
    max_model_gib: MaxModelGiB = 8.0,
    insecure: Insecure = False,
) -> None:
    """Connect this hospital to the coordinator and work on approved plans until the run ends."""
    from fedcare.net.site_agent import SiteAgent, open_budget
    from fedcare.net.site_training import site_training
    from fedcare.net.storage_checks import check_site_folder
    from fedcare.net.table_site import TableSiteMachine
    from fedcare.net.tls import TlsBundle
    from fedcare.runtime.approvals import ApprovalStore
    from fedcare.runtime.model_allow import ModelAllowList
    from fedcare.runtime.site import SiteMachine, SitePhase

    # Every option is checked before anything is written to --state (budget ledger, ...).
    coordinator = _coordinator_address(coordinator, insecure)
    if insecure:
        if not name:
            raise ConfigError("--insecure needs --name (there is no certificate to name the site)")
        loaded = None
        site_name = name
    else:
        if bundle is None:
            raise ConfigError(
                "--bundle is required (this site's bundle), or --insecure on loopback"
            )
        loaded = TlsBundle.load(bundle)
        site_name = loaded.name
    table = Path(data) if _is_table(data) else None
    rows: Any = None
    check: Any = None
    if table is None:
        rows, check = _site_data(data)
    dataset_key = str(table.resolve()) if table is not None else data
    check_site_folder(state)
    keys = None
    if he_keys is not None:
        from fedcare.he.key_files import read_key_set

        keys = read_key_set(he_keys)
    models = ModelAllowList.in_folder(state)
    models.entries()  # an unreadable allow-list stops the agent now, not at the first plan
    budget = open_budget(state, site_name, dataset_key, budget_epsilon, budget_delta)
    if budget is not None:
        total, (eps_left, delta_left) = budget.ledger.budget, budget.remaining()
        _log(
            f"privacy budget of '{data}': epsilon {total.epsilon:g}, delta {total.delta:g}; "
            f"left: epsilon {eps_left:.4g}, delta {delta_left:.3g} (ledger in {state})"
        )
    approvals = ApprovalStore(state / "approvals.json")
    if keys is not None:
        _log(f"CKKS key set {keys.key_id.hex()} loaded from {he_keys}")
    machine: Any
    if table is not None:
        machine = TableSiteMachine(
            site_name,
            approvals,
            table,
            partial(site_training, threads=threads),
            log=_plain_log,
            coordinator="coordinator",
            budget=budget,
            he_keys=keys,
            models=models,
        )
        check = machine.data
    else:

        def work(plan: Any) -> Any:
            if rows is None:
                raise ConfigError("no usable data at this site")
            return site_training(rows, threads=threads)(plan)

        machine = SiteMachine(
            site_name,
            approvals,
            check,
            work,
            coordinator="coordinator",
            budget=budget,
            he_keys=keys,
            models=models,
        )
    if check.ok and table is not None:
        _log(
            f"read '{table}' for '{site_name}': {check.summary}; it is checked against the "
            "study schema in the job plan before this site takes part"
        )
    elif check.ok:
        _log(f"data check passed for '{site_name}': {check.summary}")
    else:
        _log(f"[bold red]data check FAILED[/] for '{site_name}':")
        for problem in check.problems:
            _plain_log(f"  - {problem}")
    agent = SiteAgent(
        machine,
        coordinator,
        bundle=loaded,
        state_dir=state,
        limits=_limits(chunk_mib, max_model_gib),
        log=_plain_log,
        give_up_after_s=give_up_after * 60.0,
    )
    phase = agent.run(threading.Event())
    if phase is SitePhase.REFUSED:
        raise FedcareError(
            f"site '{site_name}' did not take part: its data ({data}) failed the check "
            "(each problem is listed above and was reported to the coordinator)"
        )
    if agent.run_status != "finished":
        raise FedcareError(
            f"site '{site_name}': the run did not finish (the coordinator reported it "
            f"{agent.run_status or 'nothing'}; its reason is above)"
        )
    console.print(f"site '{site_name}': run over ({phase.value})")


def _coordinator_address(coordinator: str, insecure: bool) -> str:
    """``--coordinator`` checked: host syntax, port 1-65535, loopback with ``--insecure``."""
    from fedcare.net.address import parse_address

    parsed = parse_address(coordinator, "--coordinator")
    _insecure_on_loopback(parsed.host, "--coordinator", insecure)
    return str(parsed)


@site_app.command("approve")
@friendly_errors
def site_approve(
    plan_hash: Annotated[
        str,
        typer.Argument(
            metavar="HASH", help="The study plan hash (or one job plan's hash) to approve."
        ),
    ],
    state: Annotated[
        Path, typer.Option(help="Site folder (as given to 'site start').")
    ] = DEFAULT_SITE_DIR,
    by: Annotated[str, typer.Option(help="Who approves (recorded).")] = "data owner",
) -> None:
    """Approve a study plan (all its runs at once) or one job plan for this site's data (a
    running site agent picks it up)."""
    from fedcare.runtime.approvals import ApprovalStore

    store = ApprovalStore(state / "approvals.json")
    pending = store.pending().get(plan_hash, {}).get("plan", {})
    store.approve(plan_hash, by=by)
    if "runs" in pending:
        what = f" (study '{pending.get('study')}', {len(pending['runs'])} runs)"
    else:
        what = f" ({pending['strategy']['name']})" if "strategy" in pending else ""
    console.print(f"approved plan {plan_hash}{what} for the data in this site's folder {state}")


@site_app.command("pending")
@friendly_errors
def site_pending(
    state: Annotated[
        Path, typer.Option(help="Site folder (as given to 'site start').")
    ] = DEFAULT_SITE_DIR,
) -> None:
    """Study and job plans that wait for this site's approval, in full."""
    import json

    from rich.markup import escape

    from fedcare.runtime.approvals import ApprovalStore
    from fedcare.runtime.model_allow import ModelAllowList, plan_models
    from fedcare.runtime.rounds import StudyPlan

    pending = ApprovalStore(state / "approvals.json").pending()
    models = ModelAllowList.in_folder(state)
    if not pending:
        console.print("no plan is waiting for approval")
    for hash_, entry in pending.items():
        console.print(f"[bold]{hash_}[/]")
        plan = entry.get("plan", {})
        for model in plan_models(plan):  # the code approving it would run at this site
            console.print(f"  builds {escape(models.describe(model))}", highlight=False)
        if "runs" in plan:  # a study: one approval covers every run listed
            study = StudyPlan.from_dict(plan)
            console.print(
                f"study '{escape(study.study)}': {len(study.runs)} runs, one after another; "
                "approving this hash approves them all:",
                highlight=False,
            )
            for line in study.describe():
                console.print(f"  {escape(line)}", highlight=False)
            for line in study.not_deployed:
                console.print(f"  not deployed: {escape(line)}", highlight=False)
        console.print_json(json.dumps(entry, default=str))
