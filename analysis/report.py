"""`python -m analysis.report RESULTS_DIR [--formats html,md,tex] [--out DIR]`: the study's report.

Writes, under OUT (default RESULTS_DIR/report): report.html (self-contained: inline CSS, images
embedded as base64, no scripts, no external URLs), report.md (linking figures/*.png), tables/*.tex
(booktabs), tables/*.csv and figures/*.{png,svg}. Every file is written atomically.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pandas as pd

from analysis import plots, provenance
from analysis.checks import BedCheck, checks_frame, not_testable, probe_check, trained_check
from analysis.configs import REGULARIZER_KEYS, configuration_order
from analysis.info_gap import InfoGapAnalysis, analyse_info_gap, is_info_gap_study
from analysis.loading import ENDED_STATUSES, history_of, load_optuna_study, missing_trials, read_study, read_trials
from analysis.metrics import (
    SHARED_CLASS_PROBE,
    STRUCTURE_METRICS,
    downstream_metrics,
    info_gap_metrics,
    present,
    validation_name,
    zeroshot_sets,
)
from analysis.stats import ALPHA
from analysis.summary import (
    Answer,
    significance_frame,
    status_sentence,
    study_answer,
)
from analysis.tables import PAPER_TABLES, AblationTable, ablation_table, paper_table, reference_table
from trainers.config import ConfigError
from trainers.storage import (
    EMBEDDINGS_FILE,
    OPTUNA_BASELINE_ATTR,
    OPTUNA_FILE,
    PROVENANCE_FILE,
    REPORT_DIR,
    write_atomic,
)
from trainers.study_spec import StudySpec

FORMATS = ("html", "md", "tex")


@dataclass
class TableBlock:
    title: str
    markdown: str
    html: str
    note: str = ""  # the legend under an HTML table (the markdown carries its own)


@dataclass
class FigureBlock:
    title: str
    png: Path


@dataclass
class Section:
    title: str
    callout: list[str] = field(default_factory=list)  # the answer, in a box before everything else
    lead: bool = False  # figures and tables before the prose (the summary: answer first, method last)
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[TableBlock] = field(default_factory=list)
    figures: list[FigureBlock] = field(default_factory=list)


@dataclass
class ReportWriter:
    """Collects the report's sections while writing tables and figures to their directories."""

    out_dir: Path
    formats: tuple[str, ...]
    sections: list[Section] = field(default_factory=list)
    answer: Answer | None = None  # the study's answer, once build_sections has found it

    def ablation(self, section: Section, table: AblationTable, stem: str) -> None:
        write_atomic(self.out_dir / "tables" / f"{stem}.csv", table.to_csv())
        if "tex" in self.formats:
            write_atomic(self.out_dir / "tables" / f"{stem}.tex", table.to_latex(label=f"tab:{stem}"))
        section.tables.append(TableBlock(table.title, table.to_markdown(), table.to_html(), table.legend()))

    def frame(self, section: Section, title: str, frame: pd.DataFrame, stem: str) -> None:
        write_atomic(self.out_dir / "tables" / f"{stem}.csv", frame.to_csv())
        if "tex" in self.formats:
            latex = frame.style.format(precision=2, na_rep="–").format_index(escape="latex", axis=0) \
                .format_index(escape="latex", axis=1).to_latex(hrules=True, caption=title, label=f"tab:{stem}")
            write_atomic(self.out_dir / "tables" / f"{stem}.tex", latex)
        # a named index becomes the first column: one header row instead of pandas' two
        shown = frame.reset_index() if frame.index.name is not None else frame
        section.tables.append(TableBlock(title, _frame_markdown(frame), shown.to_html(
            na_rep="–", float_format="%.2f", index=frame.index.name is None)))

    def figure(self, section: Section, title: str, figure, stem: str) -> None:
        paths = plots.save_figure(figure, self.out_dir / "figures", stem)
        section.figures.append(FigureBlock(title, paths["png"]))


def _frame_markdown(frame: pd.DataFrame) -> str:
    frame = frame.reset_index()
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        cells = [f"{value:.2f}" if isinstance(value, float) else str(value) for value in row]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- sections


def _overview(writer: ReportWriter, study: StudySpec, trials: pd.DataFrame, tables: list[AblationTable],
              missing: list[str], answer: Answer, checks: list[BedCheck], interrupted: str | None) -> Section:
    """The answer first (call-out, summary figure, significance table), then how it was reached."""
    search, base = study.search, study.base
    section = Section("Summary", lead=True)
    expected = study.num_trials()
    if _is_partial(study, trials, interrupted):
        finished = int((trials["status"] == "finished").sum())
        section.callout.append(
            f"Partial report — {interrupted}" if interrupted else
            f"Partial report: {finished} of {expected} expected trials finished, {_failed(trials)} failed; the "
            f"others have not finished (`python -m study.run STUDY --results DIR --resume` continues the study).")
    selected = answer.selection.config is not None and not answer.preregistered
    section.callout += [
        *([f"Best configuration: {answer.selection.config} — {answer.values_text()} (selected on "
           f"{answer.selection.by_metric}, mean over {answer.selection.seeds} seed(s))."] if selected else []),
        *([f"{answer.metric_text()}."] if selected else []),
        f"Verdict: {answer.verdict}",
    ]
    if answer.selection.note:
        section.callout.append(f"Note: {answer.selection.note}.")
    finished_trials = trials[trials["status"] == "finished"]
    if search.metric in finished_trials and finished_trials["config"].nunique() > 1:
        writer.figure(section, f"{search.metric} per configuration",
                      plots.combination_bars(finished_trials, search.metric), "combinations")
    elif not finished_trials.empty:
        section.paragraphs.append("No summary figure: one configuration has finished, nothing to set beside it.")
    untestable = not_testable(checks)
    significance = significance_frame(tables, untestable)
    if not significance.empty:
        writer.frame(section, "Each configuration against the baseline (Holm-corrected within each table)",
                     significance, "significance")
    elif len(answer.values) or len(finished_trials):
        section.paragraphs.append("No configuration could be compared with a baseline (no finished baseline "
                                  "trials in the same context), so no effect is claimed.")
    section.paragraphs.append(status_sentence(trials, missing, expected))
    if checks:
        section.paragraphs.append(
            f"Test-bed checks: {untestable}; so no conclusion is drawn." if untestable else
            "Test-bed checks: passed (" + "; ".join(check.describe() for check in checks) + ").")
    inmodal = ("on (they halve the contrastive term, doubling every weight relative to it)"
               if base.regularizers.inmodal else "off")
    section.paragraphs.append(
        f"How: study “{study.name}”, {search.method} search over {', '.join(search.space) or 'no parameters'} "
        f"with seeds {search.seeds}; primary metric {search.metric} ({search.mode}). Configurations are selected "
        f"on {validation_name(search.metric)} (mean over seeds, validation data) and reported on the test split. "
        f"Weights are shown with the batch size they were used at ({base.train.batch_size} unless searched): "
        f"L_GC sums N² pairs over N, so the same GC weight is stronger at a larger batch; in-modal terms are "
        f"{inmodal}. Each configuration is compared with the baseline of its context on the same seeds by an "
        f"exact sign-flip test of the paired differences, Holm-corrected within each family (the primary "
        f"comparison alone; each table); “helped” or “hurt” needs a corrected p < {ALPHA}; d_z is given with "
        f"its 95% noncentral-t interval; a comparison whose smallest attainable p cannot pass is “not testable”.")
    return section


def _is_partial(study: StudySpec, trials: pd.DataFrame, interrupted: str | None) -> bool:
    """Interrupted, or fewer finished trials than the study expects (a report built mid-study)."""
    expected = study.num_trials()
    ended = int(trials["status"].isin(ENDED_STATUSES).sum()) if not trials.empty else 0
    return interrupted is not None or ended + _failed(trials) < expected


def _failed(trials: pd.DataFrame) -> int:
    return int((trials["status"] == "failed").sum()) if not trials.empty else 0


def study_checks(study: StudySpec, trials: pd.DataFrame) -> list[BedCheck]:
    """The generic test-bed checks: the shared-class probe on the image embedding of the baseline far above
    chance, and for ALBEF every baseline trial's pre-training linking images and texts (the info-gap
    section adds its own in its reference cell)."""
    finished = trials[(trials["status"] == "finished") & trials["is_baseline"]]
    dataset, eval_size = str(study.base.data.dataset), int(getattr(study.base.data, "eval_size", 0) or 0)
    check = probe_check(finished, SHARED_CLASS_PROBE, "baseline", dataset, eval_size, far=True)
    pretrained = trained_check(trials[trials["status"].isin(ENDED_STATUSES) & trials["is_baseline"]],
                               "baseline")
    return [c for c in (check, pretrained) if c is not None]


def _checks_section(writer: ReportWriter, checks: list[BedCheck]) -> Section:
    section = Section("Test-bed checks")
    section.paragraphs.append(
        "Before any conclusion: did the models learn what the study's question needs? A probe is above chance "
        "(1 / classes) when a one-sided binomial test on one evaluation set (mean accuracy over seeds x the "
        "probe's test size) gives p < 0.001; the shared class must also be far above chance, at least a third "
        "of the way from chance to perfect.")
    writer.frame(section, "Test-bed checks", checks_frame(checks), "checks")
    return section


def _trials_section(trials: pd.DataFrame, missing: list[str]) -> Section:
    section = Section("Trials")
    problems = trials[trials["status"] != "finished"]
    section.bullets = [f"{row.config}, seed {row.seed} ({row.status}): {row.error}" for row in problems.itertuples()]
    section.bullets += [f"missing (no trial directory): {description}" for description in missing]
    if not section.bullets:
        section.paragraphs.append("Every expected trial finished.")
    finished = trials[trials["status"] == "finished"]
    if not finished.empty:
        columns = ["config", "seed", "trial_id", "status", "epochs_completed", "time_total_s",
                   "resources.num_workers", "resources.cpus_per_worker", "resources.use_gpu"]
        section.paragraphs.append(f"Wall time of finished trials: {finished['time_total_s'].sum():.0f} s in total, "
                                  f"{finished['time_total_s'].median():.0f} s median per trial. Each trial's files "
                                  f"are in trials/trial_<trial_id>/.")
        shown = trials[columns].rename(columns={"time_total_s": "time (s)", "epochs_completed": "epochs"})
        shown["time (s)"] = shown["time (s)"].map(lambda seconds: "–" if pd.isna(seconds) else f"{seconds:.0f}")
        shown.columns = [column.removeprefix("resources.") for column in shown.columns]
        section.tables.append(TableBlock("All trials", _frame_markdown(shown.set_index("config")),
                                         shown.to_html(index=False, na_rep="–")))
    return section


def _reference_section(writer: ReportWriter, trials: pd.DataFrame, eval_limit: int | None = None) -> Section:
    section = Section("The paper's numbers")
    reference = reference_table(trials, zeroshot_sets(trials.columns))
    if reference is not None:
        section.paragraphs.append("Zero-shot top-1 (%) on the data sets this study shares with the paper "
                                  "(Jiang et al., CVPR 2023, tables 1–2), beside this study's.")
        if eval_limit is not None:  # the paper's numbers are on full evaluation sets
            section.paragraphs.append(f"This study evaluated at most {eval_limit} images per set "
                                      "(data.eval_limit), half of them for validation; the paper used full sets.")
        writer.frame(section, "Zero-shot top-1 (%): paper and this study", reference, "reference_zeroshot")
        return section
    section.paragraphs.append("This study's data sets differ from the paper's (CC3M pre-training, zero-shot on "
                              "CIFAR-10/100 and ImageNet), so its numbers are not comparable with the paper's; "
                              "the paper's table 1 is shown for reference.")
    table1 = paper_table("table1_zero_shot.csv").pivot(index="method", columns="dataset", values="top1")
    writer.frame(section, PAPER_TABLES["table1_zero_shot.csv"], table1, "paper_table1")
    return section


def _weight_figures(writer: ReportWriter, section: Section, trials: pd.DataFrame, study: StudySpec) -> None:
    finished = trials[trials["status"] == "finished"]
    downstream = downstream_metrics(finished.columns, study.search.metric)[:4]
    structure = present(STRUCTURE_METRICS, finished.columns)
    for key in REGULARIZER_KEYS:
        if key not in study.search.searched_keys:
            continue
        weights = plots.sampled_weights(finished, key)
        label = plots.weight_label(key)
        if len(weights) < 2:  # a curve needs two weights; one weight is a bar in the summary's figure
            if weights:
                shown = (", shown in the summary's per-configuration figure"
                         if finished["config"].nunique() > 1 else "")
                section.paragraphs.append(f"No figure against the {label}: the study ran one non-zero weight "
                                          f"({weights[0]:.3g}){shown}.")
            continue
        name = key.split(".")[-1]
        writer.figure(section, f"Downstream metrics against {label}",
                      plots.metric_vs_weight(finished, key, list(dict.fromkeys(downstream))), f"{name}_downstream")
        if structure:
            writer.figure(section, f"Latent-structure diagnostics against {label}",
                          plots.metric_vs_weight(finished, key, structure), f"{name}_structure")


def _figures_section(writer: ReportWriter, study: StudySpec, trials: pd.DataFrame) -> Section:
    section = Section("Figures")
    finished = trials[trials["status"] == "finished"]
    if finished.empty:
        section.paragraphs.append("No finished trials yet: nothing to plot.")
        return section
    _weight_figures(writer, section, trials, study)
    history = history_of(trials)
    epochs = int(history["training_iteration"].max()) if not history.empty else 0
    if epochs < 2:
        section.paragraphs.append(f"No learning curves: the trials reported {epochs} epoch(s); a curve needs two.")
    else:
        order = configuration_order(finished)
        # the total, then each term it sums (the family sums the `_loss` keys): a term that ramps in, e.g.
        # ALBEF's MLM, can make the total rise while every other term falls
        loss_terms = sorted(m for m in history["metric"].unique() if m.startswith("train/") and m.endswith("_loss"))
        curves = {f"Learning curves: {study.search.metric}": [study.search.metric],
                  "Learning curves: the training loss and its terms": ["train/loss", *loss_terms]}
        for title, metrics in curves.items():
            reported = history.loc[history["metric"] == metrics[0], "training_iteration"].nunique()
            if reported >= 2:
                writer.figure(section, title, plots.learning_curves(history, metrics, order),
                              f"curves_{metrics[0].replace('/', '_')}")
            elif reported == 1:  # e.g. evaluated after the last epoch only (eval.every_epoch: false)
                section.paragraphs.append(f"No learning curve of {metrics[0]}: it was reported at one epoch only.")
    _pca_figure(writer, section, study, finished)
    return section


def _pca_figure(writer: ReportWriter, section: Section, study: StudySpec, finished: pd.DataFrame) -> None:
    """The baseline's embeddings beside the best regularized configuration's (first seed with a file)."""
    with_embeddings = finished[[Path(d, EMBEDDINGS_FILE).is_file() for d in finished["trial_dir"]]]
    baseline = with_embeddings[with_embeddings["is_baseline"]]
    regularized = with_embeddings[~with_embeddings["is_baseline"]]
    if baseline.empty or regularized.empty or study.search.metric not in finished:
        return
    by_metric = validation_name(study.search.metric)
    by_metric = by_metric if by_metric in finished else study.search.metric
    means = finished[~finished["is_baseline"]].groupby("config")[by_metric].mean()
    ranked = [config for config in means.sort_values(ascending=study.search.mode == "min").index
              if config in set(regularized["config"])]
    best = regularized[regularized["config"] == ranked[0]].sort_values("seed").iloc[0]
    base = baseline.sort_values("seed").iloc[0]
    panels = {f"{base['config']} (seed {base['seed']})": Path(base["trial_dir"], EMBEDDINGS_FILE),
              f"{best['config']} (seed {best['seed']})": Path(best["trial_dir"], EMBEDDINGS_FILE)}
    if not all(plots.has_image_and_text_embeddings(path) for path in panels.values()):
        section.paragraphs.append("No embedding PCA: the evaluation data have no captions to embed beside the "
                                  "images (image-only zero-shot sets and no retrieval set).")
        return
    writer.figure(section, "Embeddings: baseline and best regularized model (PCA)", plots.embedding_pca(panels),
                  "embeddings_pca")


def _optuna_section(writer: ReportWriter, study: StudySpec, results_dir: Path) -> Section | None:
    optuna_db = results_dir / OPTUNA_FILE
    if not optuna_db.is_file():
        return None
    import optuna

    section = Section("Optuna search")
    try:
        optuna_study = load_optuna_study(optuna_db, study.name)
    except KeyError:
        section.paragraphs.append(f"{optuna_db} holds no study named {study.name!r}.")
        return section
    complete = optuna_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    searched = [trial for trial in complete if OPTUNA_BASELINE_ATTR not in trial.user_attrs]
    section.paragraphs.append(
        f"{len(searched)} completed Optuna trials" + (" and the baseline" if len(searched) < len(complete) else "")
        + f"; objective = {validation_name(study.search.metric)} averaged over seeds ({study.search.mode}). "
        f"Browse them with `optuna-dashboard sqlite:///{optuna_db.resolve()}`.")
    if len(complete) < 2:
        section.paragraphs.append("No optimization history: it needs two completed trials.")
        return section
    writer.figure(section, "Optimization history", plots.optuna_history(optuna_study), "optuna_history")
    params = sorted({key for trial in searched for key in trial.params})
    varied = [key for key in params if len({trial.params.get(key) for trial in searched}) > 1]
    if len(searched) < 2 or not varied:
        section.paragraphs.append("No parameter importances or parallel coordinates: fewer than two searched "
                                  "configurations differ.")
    elif len(params) < 2:
        section.paragraphs.append(f"No parameter importances: the search has one parameter ({params[0]}), whose "
                                  "importance is 1 by definition; the figures against its weight show its effect.")
    else:
        writer.figure(section, "Parameter importances", plots.optuna_importances(optuna_study), "optuna_importances")
        writer.figure(section, "Parallel coordinates", plots.optuna_parallel_coordinates(optuna_study),
                      "optuna_parallel")
    return section


def _info_gap_section(writer: ReportWriter, trials: pd.DataFrame, analysis: InfoGapAnalysis) -> Section:
    section = Section("Information gap and alignment pressure")
    section.paragraphs.append(analysis.verdict)
    section.paragraphs.append(
        "Prediction (Theorem 3.1): where image and text carry different label information, pushing them into "
        "exact alignment lowers the accuracy of probes for modality-specific attributes more than where they "
        "carry the same, while the shared class is kept. "
        + ("The test above was written in the study file before it ran (its `hypothesis:` block); secondary "
           "comparisons are a separate Holm family and are labelled as such." if analysis.preregistered else
           "The study file has no pre-registered hypothesis, so nothing below is a confirmatory test."))
    section.bullets = analysis.findings
    if analysis.checks:
        writer.frame(section, "Test-bed checks of the information-gap test", checks_frame(analysis.checks),
                     "info_gap_checks")
    wide = analysis.table()
    if not wide.empty:
        writer.frame(section, "Comparisons: Δ, corrected p (Holm within each family), n, d_z [95% CI]", wide,
                     "info_gap")
    metrics = info_gap_metrics(trials.columns)
    if metrics and (trials["status"] == "finished").any():
        writer.figure(section, "Probe accuracy, zero-shot and retrieval against alignment pressure",
                      plots.info_gap_lines(trials, metrics), "info_gap")
    return section


def _provenance_section(results_dir: Path) -> Section:
    """Every start of the study (command, date, commit, packages, machine) and this report's own build."""
    section = Section("Provenance")
    runs = provenance.read_runs(results_dir)
    built = provenance.current(provenance.report_command())
    for index, run in enumerate(runs):
        what = "study started" if index == 0 else "study resumed"
        section.bullets.append(f"{what} {run.get('date', '?')}: `{run.get('command', '?')}` — git commit "
                               f"{run.get('git_commit', '?')}; {run.get('machine', '?')}; "
                               + ", ".join(f"{k} {v}" for k, v in run.get("packages", {}).items()))
    if not runs:
        section.bullets.append(f"no {PROVENANCE_FILE} in {results_dir}: how the study was run "
                               "is not recorded")
    section.bullets.append(f"report built {built['date']}: `{built['command']}` — git commit {built['git_commit']}; "
                           f"{built['machine']}; " + ", ".join(f"{k} {v}" for k, v in built["packages"].items()))
    return section


def build_sections(study: StudySpec, results_dir: Path, trials: pd.DataFrame, writer: ReportWriter,
                   interrupted: str | None = None) -> list[Section]:
    missing = missing_trials(study, trials)
    search = study.search
    checks = study_checks(study, trials)
    info_gap = analyse_info_gap(trials, study) if is_info_gap_study(search.searched_keys) else None
    preregistered = info_gap if info_gap is not None and info_gap.preregistered else None
    answer = writer.answer = _answer(study, trials, not_testable(checks), preregistered)
    selected = None if answer.preregistered else answer.selection.config  # a pre-registered test selects nothing
    rank_metric = validation_name(search.metric) if validation_name(search.metric) in trials else search.metric
    downstream = ablation_table(trials, downstream_metrics(trials.columns, search.metric), "Downstream metrics",
                                rank_metric, search.mode, selected=selected)
    structure = ablation_table(trials, present(STRUCTURE_METRICS, trials.columns), "Latent-structure diagnostics",
                               rank_metric, search.mode, selected=selected)
    tables = [table for table in (downstream, structure) if table.rows and table.metrics]
    sections = [_overview(writer, study, trials, tables, missing, answer, checks, interrupted)]
    if checks:
        sections.append(_checks_section(writer, checks))
    if info_gap is not None:
        sections.append(_info_gap_section(writer, trials, info_gap))
    ablation = Section("Ablation tables")
    for table, stem in ((downstream, "ablation_downstream"), (structure, "ablation_structure")):
        if table.rows and table.metrics:
            writer.ablation(ablation, table, stem)
    sections.append(ablation)
    sections.append(_figures_section(writer, study, trials))
    optuna_section = _optuna_section(writer, study, results_dir)
    if optuna_section is not None:
        sections.append(optuna_section)
    sections += [_reference_section(writer, trials, study.base.data.eval_limit), _trials_section(trials, missing),
                 _provenance_section(results_dir)]
    return sections


# --------------------------------------------------------------------------- rendering

_HTML = jinja2.Environment(autoescape=True).from_string("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #446; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #eef; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption, .legend { color: #555; font-size: 0.85em; }
li { margin: 0.3em 0; }
.answer { border-left: 5px solid #446; background: #f3f4fa; padding: 0.4em 1em; margin: 1em 0; font-size: 1.05em; }
.answer p { margin: 0.4em 0; } .answer p:first-child { font-weight: 600; }
.table-wrap { overflow-x: auto; max-width: 100%; }
</style></head><body>
<h1>{{ title }}</h1>
{% macro prose(section) %}{% for paragraph in section.paragraphs %}<p>{{ paragraph }}</p>
{% endfor %}{% if section.bullets %}<ul>{% for bullet in section.bullets %}<li>{{ bullet }}</li>
{% endfor %}</ul>{% endif %}{% endmacro %}
{% macro tables(section) %}{% for table in section.tables %}<h3>{{ table.title }}</h3>
<div class="table-wrap">{{ table.html | safe }}</div>
{% if table.note %}<p class="legend">{{ table.note }}</p>{% endif %}
{% endfor %}{% endmacro %}
{% macro figures(section) %}{% for figure in section.figures %}<figure><img alt="{{ figure.title }}" \
src="data:image/png;base64,{{ figure.data }}">
<figcaption>{{ figure.title }}</figcaption></figure>
{% endfor %}{% endmacro %}
{% for section in sections %}<section><h2>{{ section.title }}</h2>
{% if section.callout %}<div class="answer">{% for line in section.callout %}<p>{{ line }}</p>
{% endfor %}</div>{% endif %}
{% if section.lead %}{{ figures(section) }}{{ tables(section) }}{{ prose(section) }}
{% else %}{{ prose(section) }}{{ tables(section) }}{{ figures(section) }}{% endif %}</section>
{% endfor %}</body></html>
""")


def render_html(title: str, sections: list[Section]) -> str:
    views = [
        {**section.__dict__, "figures": [{"title": f.title, "data": base64.b64encode(f.png.read_bytes()).decode()}
                                         for f in section.figures]}
        for section in sections
    ]
    return _HTML.render(title=title, sections=views)


def render_markdown(title: str, sections: list[Section], out_dir: Path) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        lines += [f"> {line}\n>" for line in section.callout] + ([""] if section.callout else [])
        prose = [paragraph + "\n" for paragraph in section.paragraphs]
        prose += [f"- {bullet}" for bullet in section.bullets] + ([""] if section.bullets else [])
        tables = [line for table in section.tables for line in (f"### {table.title}", "", table.markdown)]
        figures = [line for figure in section.figures
                   for line in (f"![{figure.title}]({figure.png.relative_to(out_dir).as_posix()})", "")]
        lines += [*figures, *tables, *prose] if section.lead else [*prose, *tables, *figures]
    return "\n".join(lines)


def _answer(study: StudySpec, trials: pd.DataFrame, untestable: str | None,
            preregistered: InfoGapAnalysis | None) -> Answer:
    search = study.search
    return study_answer(trials, search.metric, search.mode, search.searched_keys, study.base.train.batch_size,
                        untestable, preregistered.verdict if preregistered is not None else None)


def write_report(results_dir: str | Path, out_dir: str | Path | None = None,
                 formats: tuple[str, ...] | list[str] = FORMATS, interrupted: str | None = None) -> Path:
    """Write the report of the study in `results_dir`; returns report.html (or report.md without html).
    `interrupted` (the study's interrupted line) marks the report partial and says how to resume."""
    return write_report_and_answer(results_dir, out_dir, formats, interrupted)[0]


def write_report_and_answer(results_dir: str | Path, out_dir: str | Path | None = None,
                            formats: tuple[str, ...] | list[str] = FORMATS,
                            interrupted: str | None = None) -> tuple[Path, Answer]:
    """`write_report`, also returning the answer its call-out states (what `study.run` prints at the end)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"--formats: unknown format(s) {', '.join(unknown)} (choose from {', '.join(FORMATS)})")
    results_dir = Path(results_dir)
    study = read_study(results_dir)
    trials = read_trials(study, results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / REPORT_DIR
    writer = ReportWriter(out_dir, tuple(formats))
    sections = build_sections(study, results_dir, trials, writer, interrupted)
    title = f"Study report: {study.name}" + (" (partial)" if _is_partial(study, trials, interrupted) else "")
    written = out_dir
    if "md" in formats:
        written = write_atomic(out_dir / "report.md", render_markdown(title, sections, out_dir))
    if "html" in formats:
        written = write_atomic(out_dir / "report.html", render_html(title, sections))
    return written, writer.answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", help="a study's results directory (holds study.yaml and trials/)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: html,md,tex")
    parser.add_argument("--out", default=None, help="output directory (default RESULTS_DIR/report)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    formats = tuple(item.strip() for item in args.formats.split(",") if item.strip())
    try:
        path = write_report(args.results_dir, args.out, formats)
    except (ValueError, ConfigError) as exc:
        if args.debug:
            raise
        print(f"analysis.report: {html.unescape(str(exc))}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
