"""Inline stylesheet of the study report: system fonts only, so nothing is fetched."""

CSS = """
:root { --ink: #1d2330; --muted: #5d6678; --line: #dde1e8; --soft: #f5f7fa;
  --accent: #0b5cad; --best: #e3f2e6; --best-ink: #14532d; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef1f5; color: var(--ink);
  font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 24px auto; padding: 32px 40px 24px; background: #fff;
  border: 1px solid var(--line); border-radius: 8px; }
header { border-bottom: 3px solid var(--accent); padding-bottom: 12px; margin-bottom: 20px; }
.eyebrow { margin: 0; color: var(--accent); font-size: 12px; font-weight: 600;
  letter-spacing: .08em; text-transform: uppercase; }
h1 { margin: 2px 0 4px; font-size: 28px; }
h2 { margin: 36px 0 10px; font-size: 19px; border-bottom: 1px solid var(--line);
  padding-bottom: 4px; }
h3 { margin: 18px 0 4px; font-size: 15px; }
.lede { margin: 0; color: var(--muted); }
.note { color: var(--muted); font-size: 13.5px; margin: 4px 0 10px; }
.summary { display: grid; grid-template-columns: repeat(auto-fit, minmax(118px, 1fr));
  gap: 10px; margin: 0; }
.summary div { background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 12px; }
.summary dt { color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: .05em; }
.summary dd { margin: 2px 0 0; font-weight: 600; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 22px; font-size: 14px; }
caption { caption-side: bottom; text-align: left; color: var(--muted); font-size: 12.5px;
  padding-top: 6px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
thead th { background: var(--soft); font-size: 12.5px; color: var(--muted);
  border-bottom: 2px solid var(--line); white-space: nowrap; }
tbody th { font-weight: 600; white-space: nowrap; }
tbody tr:hover { background: #fafbfd; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { background: var(--best); color: var(--best-ink); font-weight: 700; }
.pm { color: var(--muted); font-weight: 400; font-size: 12.5px; }
.na { color: #b3b9c4; }
svg.series { margin-right: 8px; vertical-align: middle; }
.findings { margin: 14px 0 0; padding: 10px 14px 10px 30px; background: var(--soft);
  border: 1px solid var(--line); border-radius: 6px; }
.findings li { margin: 2px 0; }
.alert { margin: 8px 0 12px; padding: 8px 12px; background: #fff8e6; color: #7a2e0e;
  border: 1px solid #f0c36d; border-left: 4px solid #b54708; border-radius: 6px; }
.kind { display: inline-block; margin-left: 6px; padding: 0 6px; border-radius: 9px;
  font-size: 11px; font-weight: 600; color: var(--muted); background: var(--soft);
  border: 1px solid var(--line); vertical-align: 1px; }
.kind-federated { color: var(--accent); border-color: #b9d3ee; background: #eef5fc; }
code { font: 12.5px ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  color: var(--muted); }
table.sites, table.params { width: auto; min-width: 50%; }
figure { margin: 8px 0 26px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; text-align: center; }
footer { margin-top: 36px; border-top: 1px solid var(--line); padding-top: 10px;
  color: var(--muted); font-size: 12.5px; }
footer p { margin: 4px 0; }
.importance td:last-child { width: 40%; }
.bar { display: inline-block; height: 10px; background: #2b6cb0; border-radius: 2px; }
td.worse { color: #b42318; font-weight: 600; }
@media print { body { background: #fff; } main { border: 0; margin: 0; padding: 0; }
  h2 { break-after: avoid; } table, figure { break-inside: avoid; } }
"""
