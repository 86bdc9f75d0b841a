"""Jinja2 templates of the report, kept as Python strings.

Strings (not package data files) so that they ship with any install of the
package without setuptools package-data configuration. The environment built
in :mod:`vglpipe.report.page` has autoescape ON for every template; no
template uses ``|safe``. The CSS is literal template text (never a variable,
which autoescape would mangle). Nothing here refers to any URL except
in-page anchors (``#summary``) and the ``data:`` URIs of embedded images.
"""

BASE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="vglpipe {{ version }}">
<title>{{ title }}</title>
<style>
:root { --fg: #1d232b; --muted: #5b6470; --line: #d9dee4; --bg-alt: #f4f6f8;
        --ok: #18794e; --bad: #b42318; --accent: #1f6fb2; --flag: #9a6700; }
* { box-sizing: border-box; }
html { font-size: 15px; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
main, header.page, footer.page { max-width: 1120px; margin: 0 auto; padding: 0 1.25rem; }
header.page { padding-top: 1.5rem; border-bottom: 1px solid var(--line); padding-bottom: 1rem; }
h1 { font-size: 1.65rem; margin: 0 0 0.35rem; line-height: 1.25; overflow-wrap: anywhere; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 0.6rem; padding-top: 0.4rem; border-top: 3px solid var(--fg); }
h3 { font-size: 1.05rem; margin: 1.4rem 0 0.5rem; }
p { margin: 0.4rem 0 0.8rem; max-width: 75ch; }
.lead { font-size: 1.05rem; max-width: 80ch; }
.muted { color: var(--muted); }
.headline { display: flex; flex-wrap: wrap; gap: 0.75rem; margin: 0.9rem 0 0.6rem; }
.stat { border: 1px solid var(--line); border-radius: 6px; padding: 0.5rem 0.8rem; min-width: 10rem; background: var(--bg-alt); }
.stat .v { font-size: 1.45rem; font-weight: 650; font-variant-numeric: tabular-nums; display: block; }
.stat .k { color: var(--muted); font-size: 0.85rem; overflow-wrap: anywhere; }
nav.toc ol { display: flex; flex-wrap: wrap; gap: 0.3rem 1.2rem; padding: 0; margin: 0.6rem 0 0; list-style: none; }
nav.toc a { color: var(--accent); text-decoration: none; }
nav.toc a:hover { text-decoration: underline; }
.box { background: var(--bg-alt); border-left: 4px solid var(--accent); padding: 0.55rem 0.9rem; margin: 0.8rem 0; max-width: 85ch; }
.box p { margin: 0.2rem 0; }
.table-wrap { overflow-x: auto; margin: 0.5rem 0 1rem; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 0.92rem; }
th, td { padding: 0.3rem 0.65rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid var(--fg); white-space: nowrap; }
td.num, th.num { text-align: right; white-space: nowrap; }
tr.main-exp td:first-child::after { content: " \2605"; color: var(--accent); }
tr.chance td { color: var(--muted); font-style: italic; }
tr.paper-better td:first-child::after { content: " (paper: better)"; color: var(--accent); font-weight: 400; font-size: 0.85rem; }
.verdict.flag { color: var(--flag); font-weight: 700; }
table.ablation .first-of-group { border-left: 1px solid var(--line); }
ul.verdicts { margin: 0.3rem 0 1rem; padding-left: 1.2rem; max-width: 90ch; }
tr.flagged td { color: var(--flag); background: #fff8e6; }
.flag { color: var(--flag); font-weight: 600; white-space: nowrap; }
td.name { font-weight: 600; overflow-wrap: anywhere; max-width: 16rem; }
td.desc { color: var(--muted); max-width: 24rem; overflow-wrap: anywhere; }
th.group { text-align: center; border-bottom: 1px solid var(--fg); }
table#recall-table { font-size: 0.85rem; }
table#recall-table th, table#recall-table td { padding: 0.28rem 0.4rem; }
table#recall-table .first-of-group { border-left: 1px solid var(--line); }
figure { margin: 0.8rem 0 1.2rem; }
figure.plot img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 0.9rem; max-width: 90ch; }
.examples { display: grid; grid-template-columns: 1fr; gap: 1.2rem; }
figure.example { border: 1px solid var(--line); border-radius: 6px; padding: 0.6rem; margin: 0; background: #fff; }
figure.example.success { border-left: 5px solid var(--ok); }
figure.example.failure { border-left: 5px solid var(--bad); }
figure.example img { width: 100%; height: auto; display: block; }
figure.example figcaption { color: var(--fg); margin-top: 0.4rem; }
.verdict.ok { color: var(--ok); font-weight: 700; }
.verdict.bad { color: var(--bad); font-weight: 700; }
.attribution { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.88rem; overflow-wrap: anywhere; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 1rem; margin: 0.4rem 0 1rem; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; overflow-wrap: anywhere; font-variant-numeric: tabular-nums; }
details { margin: 0.4rem 0 1rem; }
summary { cursor: pointer; color: var(--accent); }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 0 2rem; }
footer.page { color: var(--muted); font-size: 0.85rem; border-top: 1px solid var(--line); margin-top: 2.5rem; padding-top: 0.8rem; padding-bottom: 2rem; }
@media print { h2 { break-before: auto; } figure { break-inside: avoid; } }
</style>
</head>
<body>
{% block body %}{% endblock %}
</body>
</html>
"""

MACROS = r"""{% macro kv_table(rows, empty="none") -%}
{% if rows %}<dl class="kv">
{% for k, v in rows %}<dt>{{ k }}</dt><dd>{{ v }}</dd>
{% endfor %}</dl>{% else %}<p class="muted">{{ empty }}</p>{% endif %}
{%- endmacro %}

{% macro example_card(ex) -%}
<figure class="example {{ ex.css }}" id="{{ ex.anchor }}">
<img src="{{ ex.src }}" width="{{ ex.width }}" height="{{ ex.height }}" alt="Query photo {{ ex.attribution }} beside the orthophoto with the score heatmap">
<figcaption>
<span class="verdict {{ ex.verdict_css }}">{{ ex.verdict }}</span> {{ ex.detail }}<br>
<span class="muted">Photo</span> <span class="attribution">{{ ex.attribution }}</span>
{% if ex.captured %}<span class="muted">· captured</span> {{ ex.captured }}{% endif %}
<span class="muted">· {{ ex.position_label }}</span> {{ ex.position }}
{% if ex.experiment %}<span class="muted">· scores by</span> {{ ex.experiment }}{% endif %}
</figcaption>
</figure>
{%- endmacro %}
"""

REPORT = r"""{% extends "base.html" %}
{% from "macros.html" import kv_table, example_card %}
{% block body %}
<header class="page" id="overview">
<h1>{{ title }}</h1>
<p class="lead">{{ lead }}</p>
<div class="headline">
{% for s in headline %}<div class="stat"><span class="v">{{ s.value }}</span><span class="k">{{ s.label }}</span></div>
{% endfor %}</div>
<nav class="toc" aria-label="Sections"><ol>
<li><a href="#summary">Summary</a></li>
{% if ablations %}<li><a href="#ablations">Ablations</a></li>
{% endif %}<li><a href="#curves">Recall vs N</a></li>
<li><a href="#by-year">By year</a></li>
<li><a href="#by-hour">By hour</a></li>
<li><a href="#examples">Examples</a></li>
<li><a href="#facts">Run facts</a></li>
</ol></nav>
</header>
<main>
<div class="box">
<p><strong>How to read the numbers.</strong> The search region is divided into square cells; the model scores every cell for each query photo and ranks them.
<strong>R@N&lt;r</strong> is the share of query photos for which at least one of the N top-ranked cells has its centre within r metres of the photo's true position
(the paper's metric, §4.2). <em>Chance</em> is the same recall for a random ranking of the same cells; the <em>untrained</em> row, when present,
is the same architecture with random weights. All numbers are percent.</p>
</div>

<section id="summary">
<h2>Summary</h2>
<p>Experiments side by side, as in the paper's Table 2 (best value per column in bold; <span aria-hidden="true">&#9733;</span> marks the main experiment, whose breakdowns and examples follow).</p>
<div class="table-wrap">
<table id="summary-table">
<thead><tr><th>Experiment</th><th>What it is</th><th class="num">Queries</th>
{% for k in summary_keys %}<th class="num" scope="col">{{ k }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in summary_rows %}<tr class="{{ row.css }}" data-experiment="{{ row.name }}">
<td class="name">{{ row.name }}</td><td class="desc">{{ row.description }}</td><td class="num">{{ row.n_queries }}</td>
{% for c in row.cells %}<td class="num" data-key="{{ c.key }}" data-value="{{ c.raw }}">{% if c.best %}<strong>{{ c.text }}</strong>{% else %}{{ c.text }}{% endif %}</td>{% endfor %}
</tr>
{% endfor %}</tbody>
</table>
</div>
<h3 id="summary-full">All N &times; r</h3>
<div class="table-wrap">
<table id="recall-table">
<thead>
<tr><th rowspan="2">Experiment</th>{% for r, ns in full_groups %}<th class="group first-of-group" colspan="{{ ns|length }}" scope="colgroup">&lt; {{ r }} m</th>{% endfor %}</tr>
<tr>{% for r, ns in full_groups %}{% for n in ns %}<th class="num{% if loop.first %} first-of-group{% endif %}" scope="col">R@{{ n }}</th>{% endfor %}{% endfor %}</tr>
</thead>
<tbody>
{% for row in full_rows %}<tr class="{{ row.css }}" data-experiment="{{ row.name }}"><td class="name">{{ row.name }}</td>
{% for c in row.cells %}<td class="num{% if c.first %} first-of-group{% endif %}" data-key="{{ c.key }}" data-value="{{ c.raw }}">{% if c.best %}<strong>{{ c.text }}</strong>{% else %}{{ c.text }}{% endif %}</td>{% endfor %}
</tr>
{% endfor %}</tbody>
</table>
</div>
</section>

{% if ablations %}
<section id="ablations">
<h2>Ablations</h2>
<p>Each factor varied as in the paper's ablation tables, everything else as in the reference settings.
One row per variant, with its {{ ablations[0].metrics[0] }} and {{ ablations[0].metrics[1] }} for each seed (run-to-run repeats that differ only in
<code>train.seed</code>), their mean and the min–max spread over the seeds.
The verdict compares the variant the paper finds better with each other one on {{ ablations[0].metrics[0] }}:
it <em>holds</em> when its mean is higher and every one of its seeds beats every seed of the other variant, it is <em>reversed</em> when
the other variant wins that way, and otherwise the difference is within the seed spread and cannot be told from noise
(with fewer than two seeds per variant there is no verdict).</p>
{% for f in ablations %}
<h3 id="{{ f.id }}">{{ f.factor }}</h3>
{% if f.better %}<p>Paper: <strong>{{ f.better }}</strong> is better{% if f.source %} ({{ f.source }}){% endif %}.</p>{% endif %}
<div class="table-wrap">
<table id="table-{{ f.id }}" class="ablation">
<thead>
<tr><th rowspan="2">Variant</th><th rowspan="2">Seeds</th>
{% for k in f.metrics %}<th class="group first-of-group" colspan="3" scope="colgroup">{{ k }}</th>{% endfor %}<th rowspan="2">Experiments</th></tr>
<tr>{% for k in f.metrics %}<th class="num first-of-group" scope="col">per seed</th><th class="num" scope="col">mean</th><th class="num" scope="col">spread</th>{% endfor %}</tr>
</thead>
<tbody>
{% for row in f.rows %}<tr{% if row.better %} class="paper-better"{% endif %} data-variant="{{ row.variant }}">
<td class="name">{{ row.variant }}</td><td class="num">{{ row.seeds }}</td>
{% for c in row.cells %}<td class="num first-of-group" data-key="{{ c.key }}">{{ c.per_seed }}</td><td class="num" data-key="{{ c.key }}" data-stat="mean"><strong>{{ c.mean }}</strong></td><td class="num" data-key="{{ c.key }}" data-stat="spread">{{ c.spread }}</td>{% endfor %}
<td class="desc">{{ row.experiments }}</td>
</tr>
{% endfor %}</tbody>
</table>
</div>
<figure class="plot" id="fig-{{ f.id }}">
<img src="{{ f.src }}" alt="{{ f.alt }}">
</figure>
{% if f.verdicts %}<ul class="verdicts">
{% for v in f.verdicts %}<li data-verdict="{{ v.verdict }}"><span class="verdict {{ v.css }}" title="{{ v.verdict }}" aria-hidden="true">{{ v.mark }}</span> {{ v.text }}</li>
{% endfor %}</ul>
{% else %}<p class="muted">{{ f.note }}</p>{% endif %}
{% endfor %}
</section>
{% endif %}

<section id="curves">
<h2>Recall vs N</h2>
<p>How recall grows when more top-ranked cells are allowed, for each radius r. One line per experiment; the dashed line is chance.</p>
<figure class="plot" id="fig-curves">
<img src="{{ curves_src }}" alt="Recall versus N for each radius, one line per experiment">
<figcaption>Recall (R@N &lt; r) against N on a log axis.</figcaption>
</figure>
</section>

{% for s in strata %}
<section id="{{ s.id }}">
<h2>{{ s.heading }}</h2>
{% if s.src %}
<p>{{ s.intro }}</p>
<figure class="plot" id="fig-{{ s.id }}">
<img src="{{ s.src }}" alt="{{ s.alt }}">
<figcaption>Bars: {{ s.metric }} of {{ main_name }}; diamonds: the other experiments; lower panel: photos per {{ s.unit }}.
Hatched, pale bars are flagged strata (fewer photos than {% if s.min_count is not none %}the minimum of {{ s.min_count }}{% else %}the evaluation's minimum{% endif %}): drawn, but not reliable.</figcaption>
</figure>
{% if s.flagged %}<p class="flag-note"><span class="flag">&#9873; Flagged ({{ s.n_flagged }} {{ s.unit }}{% if s.n_flagged != 1 %}s{% endif %}):</span> {{ s.flagged|join(", ") }} — too few photos for a reliable recall.</p>
{% else %}<p class="muted">No stratum is flagged.</p>{% endif %}
<details>
<summary>Numbers per {{ s.unit }}</summary>
<div class="table-wrap">
<table id="table-{{ s.id }}">
<thead><tr><th>{{ s.unit|capitalize }}</th><th class="num">Photos</th>{% for name in s.columns %}<th class="num">{{ s.metric }}: {{ name }}</th>{% endfor %}<th>Note</th></tr></thead>
<tbody>
{% for row in s.rows %}<tr{% if row.flagged %} class="flagged"{% endif %}><td>{{ row.label }}</td><td class="num">{{ row.count }}</td>
{% for v in row.cells %}<td class="num">{{ v }}</td>{% endfor %}
<td>{% if row.flagged %}<span class="flag">&#9873; flagged: few photos</span>{% endif %}</td></tr>
{% endfor %}</tbody>
</table>
</div>
</details>
{% else %}
<p class="muted">{{ s.missing }}</p>
{% endif %}
</section>
{% endfor %}

<section id="examples">
<h2>Example localizations</h2>
{% if example_groups %}
<p>Each example shows the query photo (left) and our orthophoto of the area around its true position (right). The coloured squares are search-region cells,
coloured by the model's score (red/opaque = high, blue/faint = low); the white circle has radius r around the true position (crosshair);
numbered dots are the top-ranked cells (cyan = rank 1). Predictions outside the map are drawn as hollow diamonds on its edge, pointing towards them.
Successes and failures are shown separately (cf. the paper's Fig. 5 and Fig. 9).</p>
{% for g in example_groups %}
<h3 id="{{ g.id }}">{{ g.heading }} ({{ g.entries|length }})</h3>
<div class="examples">
{% for ex in g.entries %}{{ example_card(ex) }}
{% endfor %}</div>
{% endfor %}
{% else %}
<p class="muted">No examples were provided.</p>
{% endif %}
</section>

<section id="facts">
<h2>Run facts</h2>
<div class="grid2">
<div>
<h3 id="facts-run">Run</h3>
{{ kv_table(run_rows) }}
<h3 id="facts-skipped">Skipped inputs</h3>
{% if skipped_rows %}<div class="table-wrap"><table id="table-skipped"><thead><tr><th>Reason</th><th class="num">Inputs</th></tr></thead><tbody>
{% for reason, n in skipped_rows %}<tr><td>{{ reason }}</td><td class="num">{{ n }}</td></tr>
{% endfor %}</tbody><tfoot><tr><th>Total</th><th class="num">{{ skipped_total }}</th></tr></tfoot></table></div>
{% else %}<p class="muted">No inputs were skipped.</p>{% endif %}
</div>
<div>
<h3 id="facts-timings">Timings</h3>
{% if timing_rows %}<div class="table-wrap"><table id="table-timings"><thead><tr><th>Stage</th><th class="num">Wall-clock</th></tr></thead><tbody>
{% for stage, t in timing_rows %}<tr><td>{{ stage }}</td><td class="num">{{ t }}</td></tr>
{% endfor %}</tbody></table></div>
{% else %}<p class="muted">No timings recorded.</p>{% endif %}
</div>
</div>
<h3 id="facts-experiments">Experiments</h3>
<div class="table-wrap">
<table id="table-experiment-facts">
<thead><tr><th></th>{% for name in exp_names %}<th>{{ name }}</th>{% endfor %}</tr></thead>
<tbody>
{% for key, values in exp_fact_rows %}<tr><th scope="row">{{ key }}</th>{% for v in values %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
</div>
{% if extra_rows %}<h3 id="facts-other">Other</h3>
{{ kv_table(extra_rows) }}{% endif %}
</section>
</main>
<footer class="page">
<p>Generated by vglpipe {{ version }}{% if generated_at %} on {{ generated_at }}{% endif %}. This file is self-contained: it needs no network access and runs no scripts.</p>
</footer>
{% endblock %}
"""

LOCALIZATION = r"""{% extends "base.html" %}
{% from "macros.html" import kv_table, example_card %}
{% block body %}
<header class="page" id="overview">
<h1>{{ title }}</h1>
<p class="lead">{{ lead }}</p>
</header>
<main>
<section id="result">
<h2>Result</h2>
<div class="examples">{{ example_card(ex) }}</div>
<div class="table-wrap">
<table id="table-topk">
<thead><tr><th class="num">Rank</th><th class="num">Latitude</th><th class="num">Longitude</th><th class="num">Distance</th><th class="num">Score</th></tr></thead>
<tbody>
{% for p in topk %}<tr><td class="num">{{ p.rank }}</td><td class="num">{{ p.lat }}</td><td class="num">{{ p.lon }}</td><td class="num">{{ p.dist }}</td><td class="num">{{ p.score }}</td></tr>
{% endfor %}</tbody>
</table>
</div>
<p class="muted">Distance: from {{ ex.position_label }}.</p>
</section>
<section id="facts">
<h2>Facts</h2>
{{ kv_table(fact_rows, "No facts recorded.") }}
</section>
</main>
<footer class="page">
<p>Generated by vglpipe {{ version }}. This file is self-contained: it needs no network access and runs no scripts.</p>
</footer>
{% endblock %}
"""
