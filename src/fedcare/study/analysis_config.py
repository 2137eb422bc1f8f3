"""The analysis YAML (``fedcare analyze analysis.yaml``): pydantic, every key checked.

An analysis file names its dataset (a shipped one, or hospitals' own tables with a schema,
as a study does), which rows (``split``), the analyses in order, the disclosure rules, the
optional noise and the secure sum. :meth:`AnalysisConfig.plan` turns it into the
:class:`~fedcare.runtime.query_plan.QueryPlan` whose hash the data owners approve; the
simulator and a deployed ``query`` job run that same plan.

```yaml
name: brca-survival
dataset: {name: tcga-brca}
split: all
disclosure: {min_cell: 5}
analyses:
  - {kind: km, id: km-overall}
  - {kind: cox, params: {covariates: [age, stage]}}
```
"""

from __future__ import annotations

import difflib
import hashlib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedcare.core.errors import ConfigError
from fedcare.data.yaml_config import read_yaml
from fedcare.runtime.query_plan import (
    AnalysisSpec,
    NoisePlan,
    QueryPlan,
    analysis_kind,
    check_params,
)
from fedcare.stats.protocol import DisclosureRules
from fedcare.study.config import DatasetConfig, _format_loc, _model_in, resolve_paths


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteRulesConfig(_Strict):
    """A simulated site's own disclosure rules (a deployed site sets them in its config)."""

    min_cell: int = Field(default=5, ge=1)
    release_extremes: bool = False


class DisclosureConfig(_Strict):
    """What may leave a site: counts below ``min_cell`` are suppressed at the site;
    min/max only with ``release_extremes``. ``sites`` simulates hospitals' own, stricter
    rules (the plan can never loosen them)."""

    min_cell: int = Field(default=5, ge=1)
    release_extremes: bool = False
    sites: dict[str, SiteRulesConfig] = Field(default_factory=dict)

    def rules(self) -> DisclosureRules:
        return DisclosureRules(min_cell=self.min_cell, release_extremes=self.release_extremes)


class BudgetConfig(_Strict):
    """The privacy budget each simulated site's ledger holds (a deployed site has its own)."""

    epsilon: float = Field(default=10.0, gt=0)
    delta: float = Field(default=1e-4, ge=0, lt=1)


class NoiseConfig(_Strict):
    """Differential privacy per release: Laplace (epsilon) or Gaussian (epsilon, delta),
    each answered question charged to the site's budget ledger. ``site_budget`` and
    ``seed`` are the simulation's (the simulated ledgers' budget, the noise draws)."""

    mechanism: Literal["laplace", "gaussian"]
    epsilon: float = Field(gt=0)
    delta: float = Field(default=0.0, ge=0, lt=1)
    site_budget: BudgetConfig = Field(default_factory=BudgetConfig)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _delta_for_gaussian(self) -> NoiseConfig:
        if self.mechanism == "gaussian" and self.delta <= 0:
            raise ValueError("the gaussian mechanism needs 'delta' > 0 (e.g. 1.0e-5)")
        if self.mechanism == "laplace" and self.delta != 0:
            raise ValueError("the laplace mechanism takes no 'delta' (it is pure epsilon-DP)")
        return self


class AnalysisEntry(_Strict):
    """One analysis: its ``kind`` (describe, km, logrank, cox, cindex, ...), an ``id``
    (default: the kind, numbered when repeated) and the kind's own ``params``."""

    kind: str
    id: str | None = Field(default=None, min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class AnalysisConfig(_Strict):
    name: str = Field(min_length=1)
    dataset: DatasetConfig
    split: Literal["train", "test", "all"] = "all"
    sites: list[str] | None = Field(default=None, min_length=1)  # default: every site
    analyses: list[AnalysisEntry] = Field(min_length=1)
    disclosure: DisclosureConfig = Field(default_factory=DisclosureConfig)
    dp: NoiseConfig | None = None
    secure: Literal["none", "secagg", "ckks"] = "none"
    output: str | None = None

    def specs(self) -> tuple[AnalysisSpec, ...]:
        """Each analysis with its id and its parameters as the kind's model reads them."""
        specs = []
        for position, entry in enumerate(self.analyses):
            where = f"analyses[{position}]"
            kind = analysis_kind(entry.kind, where)
            params = check_params(kind, entry.params, where)
            ident = entry.id or self._default_id(entry.kind, position)
            exact = getattr(params, "exact_times", lambda: None)()
            if exact is not None and self.disclosure.min_cell > 1:
                raise ConfigError(
                    f"{where} ({entry.kind} '{ident}'): {exact.split(' (')[0]} releases exact "
                    f"event times, counts of one, which disclosure.min_cell "
                    f"{self.disclosure.min_cell} forbids at every site; set disclosure: "
                    f"{{min_cell: 1}} if the sites allow it, or {exact.split(' (', 1)[1][:-1]}"
                )
            specs.append(AnalysisSpec(ident, entry.kind, params.model_dump(mode="json")))
        return tuple(specs)

    def _default_id(self, kind: str, position: int) -> str:
        same = [i for i, e in enumerate(self.analyses) if e.kind == kind and e.id is None]
        return kind if len(same) == 1 else f"{kind}-{same.index(position) + 1}"

    def chosen_sites(self, available: list[str]) -> list[str]:
        """The sites the analysis runs over: ``sites`` if given (each one the dataset's),
        else every site of the dataset, in the dataset's order."""
        if self.sites is None:
            return list(available)
        missing = [s for s in self.sites if s not in available]
        if missing:
            raise ConfigError(
                f"sites names {missing}, which the dataset does not have (its sites: "
                f"{', '.join(available)})"
            )
        return [s for s in available if s in self.sites]

    def plan(self, available: list[str]) -> QueryPlan:
        """The plan the owners approve, over the chosen sites of ``available``."""
        sites = self.chosen_sites(available)
        unknown = sorted(set(self.disclosure.sites) - set(sites))
        if unknown:
            raise ConfigError(
                f"disclosure.sites names {unknown}, which the dataset does not have "
                f"(its sites: {', '.join(sites)})"
            )
        return QueryPlan(
            name=self.name,
            dataset=self.dataset.name,
            dataset_params=self._plan_params(),
            split=self.split,
            sites=tuple(sites),
            analyses=self.specs(),
            rules=self.disclosure.rules(),
            noise=None
            if self.dp is None
            else NoisePlan(self.dp.mechanism, self.dp.epsilon, self.dp.delta),
            secure=self.secure,
        )

    def _plan_params(self) -> dict[str, Any]:
        """The dataset's settings as the plan carries them. Hospitals' own tables: the
        schema's SHA-256 (each site checks its own schema file against it), never the
        coordinator's file paths."""
        if self.dataset.name != "tabular":
            return dict(self.dataset.params)
        schema = self.dataset.params.get("schema")
        if not isinstance(schema, str):
            raise ConfigError("dataset 'tabular' needs params.schema (the schema YAML)")
        return {"schema_sha256": schema_digest(Path(schema))}

    def site_rules(self) -> dict[str, DisclosureRules]:
        """The simulated sites' own rules (sites not named have none of their own)."""
        return {
            site: DisclosureRules(min_cell=r.min_cell, release_extremes=r.release_extremes)
            for site, r in self.disclosure.sites.items()
        }


def schema_digest(path: Path) -> str:
    """The SHA-256 of a schema file's bytes: what a query plan on own tables names."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ConfigError(f"schema '{path}': cannot be read ({exc.strerror or exc})") from None


REQUIRED_KEYS = ("name", "dataset", "analyses")
_EXAMPLE = "e.g. name: survival, dataset: {name: tcga-brca}, analyses: [{kind: km}]"


def load_analysis_config(path: Path | str) -> AnalysisConfig:
    """Read and check an analysis YAML; every problem is a ConfigError naming the file."""
    raw = read_yaml(path, "analysis file")
    if not isinstance(raw, dict):
        found = "nothing" if raw is None else type(raw).__name__
        raise ConfigError(
            f"{path}: expected a mapping with {', '.join(REQUIRED_KEYS)} at the top level, "
            f"found {found} ({_EXAMPLE})"
        )
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if isinstance(raw.get("dataset"), dict) and "name" not in raw["dataset"]:
        missing.append("dataset.name")
    if missing:
        raise ConfigError(f"{path}: missing required key(s): {', '.join(missing)} ({_EXAMPLE})")
    return parse_analysis_config(resolve_paths(raw, Path(path).parent), source=str(path))


def parse_analysis_config(raw: dict[str, Any], source: str = "analysis") -> AnalysisConfig:
    """Validate ``raw``, including each analysis's parameters against its kind."""
    try:
        config = AnalysisConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    try:  # each kind known, its params valid and the analysis buildable, before anything runs
        for spec in config.specs():
            spec.build(config.disclosure.rules())
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


def _describe(err: Any) -> str:
    loc = tuple(err.get("loc", ()))
    where = _format_loc(loc)
    if err.get("type") == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown key '{where}'{hint} (allowed here: {', '.join(sorted(allowed))})"
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"'{where}': {message}" if where else message


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the config model at ``loc`` (through lists, optionals and the
    site-name keys of ``disclosure.sites``)."""
    model: Any = AnalysisConfig
    dict_key = False
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if dict_key:  # a site name, not a field
            dict_key = False
            continue
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if typing.get_origin(annotation) is dict:
            model = _model_in(typing.get_args(annotation)[1])
            dict_key = True
        else:
            model = _model_in(annotation) if annotation is not None else None
    return list(model.model_fields) if model is not None else []
