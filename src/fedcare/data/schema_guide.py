"""The tabular schema explained, as ``fedcare datasets describe tabular`` prints it.

Kept beside the code it describes (schema.py, table_checks.py, harmonise.py, table_file.py)
so that a change of behaviour there has its sentence here; the README's section "Your own
tables: the schema" says the same at more length.
"""

from __future__ import annotations

SCHEMA_EXAMPLE = """\
target:
  column: outcome        # the label column; every row needs a label
  positive: [1]          # the value(s) meaning the positive class
  negative: [0]          # the value(s) meaning the negative class; any other value is an error
features:
  - {name: age, type: numeric, min: 0, max: 120}
  - {name: sbp, type: numeric, min: 50, max: 260}
  - {name: bmi, type: numeric, required: false}        # a site may lack the column
  - {name: smoker, type: binary}                       # 0/1, true/false, yes/no
  - {name: ward, type: categorical, categories: [cardio, icu, onco]}
missing_indicator: true  # a 0/1 "<name>_missing" column per numeric or binary feature
test_fraction: 0.3       # share of each site's rows held out (or split_column: set)
"""

SURVIVAL_EXAMPLE = """\
survival:                # instead of target: time-to-event data
  time: days             # follow-up time, a number >= 0 in every row (one unit everywhere)
  event: died            # the event indicator column
  event_values: [1]      # the value(s) meaning the event was observed (default [1])
  censored_values: [0]   # the value(s) meaning censored (default [0]); others are errors
features:
  - {name: age, type: numeric, min: 0, max: 120}
  - {name: stage, type: categorical, categories: [I, II, III, IV]}
"""

SCHEMA_GUIDE = f"""\
A study on your own tables names one CSV or Parquet file per site and one schema (YAML):

  dataset:
    name: tabular
    params: {{schema: schema.yaml, files: {{north: north.csv, south: south.csv}}}}

Paths are relative to the study YAML's folder. `fedcare datasets schema FILE.csv --target
COLUMN --out schema.yaml` drafts a schema from one file for you to check and edit.

Example schema:

{SCHEMA_EXAMPLE}
Keys (a misspelled key is an error that names the keys allowed there):

target.column      the label column. A row without a label is an error.
target.positive    binary target: the value(s) of the positive class, e.g. [1] or ['yes'].
target.negative    binary target: the value(s) of the negative class. Both are required: a
                   label in neither list is an error naming the row and line, never a
                   silent negative.
target.classes     multiclass target instead: the ordered list of class values.
features           the columns the model uses, in order; other columns are ignored.
  name             the column's header in every site's file.
  type             numeric (numbers; text in the column is an error), binary (0/1,
                   true/false, yes/no, y/n, t/f, any case) or categorical (text or codes,
                   one-hot encoded).
  min, max         numeric only, optional: a value outside [min, max] is an error. They
                   are rules for every site, so set the values possible anywhere, not the
                   range one hospital happens to have.
  categories       categorical: the allowed values; a value not listed is an error. Each
                   becomes one 0/1 column. Required with per-site normalisation (the
                   default) and in deployment, where every site must build the same columns.
  required         default true: every site's file must have the column. false: a site may
                   lack it, and its rows then count as missing for that feature.
split_column       a column holding 'train' or 'test' in every row: the split is yours.
test_fraction      otherwise each site's rows are split at random, stratified by label,
                   this share for testing (default 0.3). Not with split_column.
seed               pins that random split; without it the split follows each run's seed
                   (and dataset.params.seed pins it for one study).
missing_indicator  default false. true adds a 0/1 "<name>_missing" column for numeric and
                   binary features (with per-site normalisation: for every one of them).
survival           instead of target, for time-to-event data (survival analyses such as
                   Kaplan-Meier and Cox, and survival models trained on time and event).
                   A schema declares exactly one of target and survival.
  time             the follow-up time column: a number >= 0 in every row, in one unit
                   (e.g. days) at every site. A missing, non-numeric or negative time is an
                   error naming the row and line.
  event            the event indicator column; every row needs a declared value.
  event_values     the value(s) meaning the event was observed (default [1]).
  censored_values  the value(s) meaning the row is censored (default [0]). Any other value
                   is an error, never a silent censoring.
  entry            optional: when the patient entered follow-up (left truncation), a
                   number >= 0 and at most the row's time. Used by analyses; training a
                   model refuses a schema that declares it rather than ignore it.
                   time, event and entry are not features and not the split_column.

Example survival schema:

{SURVIVAL_EXAMPLE}
Values are compared as text: 1, 1.0 and '1' are the same value, spaces around a value are
ignored, case is not (Yes is not yes). In YAML quote yes/no/true/false/on/off (['yes']):
unquoted, YAML turns them into booleans, and the schema refuses them.

Missing values: an empty cell (or NA, NaN, null) is missing. A numeric or binary value that
is missing is imputed with the mean of the training rows (the site's own rows under
normalise: site), which is 0 after standardisation, and flagged in its "_missing" column
when missing_indicator is on. A missing category is all zeros in its one-hot columns. A
column with no value at all at a site is an error. Numeric and binary features are z-scored
with the training rows' mean and standard deviation (a constant column becomes 0).

Reading files: CSV with a comma, semicolon, tab or pipe between values (detected from the
header and the lines below it; anything but a comma is a warning), spaces after the
delimiters and around header names ignored; or Parquet. A missing column is reported with
the file's closest column name ("did you mean ...?").

Warnings (the run goes on): a category seen at one site only (an error with strict: true);
a survival site whose rows are all censored (it adds no event to a log-rank test or a Cox
model, and its own C-index is undefined); a site whose training rows are all one class.
Its local-only baseline then learns to predict that class, it still sends federated
updates (which pull the shared model toward that class), and its own AUC is undefined
wherever its test rows are one class too.
"""
