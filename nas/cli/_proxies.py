"""``nas proxies``: zero-cost proxy scores of a space's architectures, and how well they rank a
trained study's networks (Spearman and Kendall with validation accuracy)."""

from __future__ import annotations

import typer

from .._fields import PROXY_NAMES, STUDY, help_text
from ._common import STORAGE_HELP, Format, UsageError, app, emit, open_store, out, parse_options


def _proxy_list(text: str | None) -> list[str]:
    names = [p.strip() for p in (text or ",".join(PROXY_NAMES)).split(",") if p.strip()]
    bad = [p for p in names if p not in PROXY_NAMES]
    if bad or not names:
        raise UsageError(f"--proxies: unknown proxy {bad[0]!r}; accepted: {', '.join(PROXY_NAMES)}" if bad else
                         f"--proxies: none given; accepted: {', '.join(PROXY_NAMES)}")
    return list(dict.fromkeys(names))


@app.command("proxies")
def proxies_cmd(
    study: str = typer.Option(None, "--study", help="a trained study: each proxy's rank correlation with its "
                                                    "networks' validation accuracy"),
    space: str = typer.Option(None, "--space", help="score random architectures of this space instead"),
    data: str = typer.Option("digits", "--data", help=help_text(STUDY["data"])),
    n: int = typer.Option(20, "--n", help="--space: architectures to score", min=1, max=10_000),
    budget: str = typer.Option(None, "--budget", help="--space: only architectures within this budget"),
    option: list[str] = typer.Option([], "--option", help="--space: space option key=value (repeatable)"),
    proxies: str = typer.Option(None, "--proxies", help="comma list of " + ", ".join(PROXY_NAMES) + " (default all)"),
    seed: int = typer.Option(0, "--seed", help="seed of the drawn architectures, their weights and the batch",
                             min=0, max=2**32 - 1),
    fmt: Format = typer.Option(Format.table, "--format", help="table, json or csv"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP + "; scores are cached there"),
) -> None:
    """Score architectures with zero-cost proxies (untrained networks, one batch); with --study,
    see whether each proxy ranks that study's trained networks as their accuracy does."""
    names = _proxy_list(proxies)
    if (study is None) == (space is None):
        raise UsageError("give --study NAME (correlations on a trained study) or --space NAME (scores of random "
                         "architectures), not both")
    if study is not None:
        from ..search import study_correlations

        rows, count = study_correlations(study, open_store(storage), names, threads=1)
        if fmt is Format.table:
            out.print(f"study {study}: {count} trained networks; rank correlation of each proxy with validation "
                      "accuracy (1: same order, 0: none, -1: reversed)")
        emit(rows, fmt, "zero-cost proxies vs validation accuracy")
        return
    _score_space(space, data, n, budget, option, names, seed, fmt, storage)


def _score_space(space: str, data: str, n: int, budget: str | None, option: list[str], names: list[str], seed: int,
                 fmt: Format, storage: str | None) -> None:
    from objectives import VOTE, VOTE_MEMBERS, load_dataset, parse_budget, sample_within, vote_scores
    from search_spaces import get_space

    from ..search import ProxyScorer

    limit = parse_budget(budget) if budget else None
    dataset = load_dataset(data, seed=seed)
    sp = get_space(space, input_shape=dataset.input_shape, **parse_options(option))
    store = open_store(storage) if storage else None
    scorer = ProxyScorer(dataset, store, {"data": data, "seed": seed}, seed=seed, threads=1)
    archs = sample_within(sp, limit, dataset.num_classes, n, seed=seed)
    if not archs:
        raise UsageError(f"--budget: no architecture of space {space!r} drawn within {budget!r}; loosen it "
                         "(see 'nas study create' for the space's minimum)")
    need = [p for p in names if p != VOTE] + [m for m in VOTE_MEMBERS if VOTE in names and m not in names]
    scores = [scorer.scores(a, need) for a in archs]
    votes = vote_scores(scores) if VOTE in names else []
    rows = []
    for i, (arch, s) in enumerate(zip(archs, scores, strict=True)):
        row: dict[str, object] = {"arch": arch.short_hash}
        for p in names:
            v = votes[i] if p == VOTE else s[p]
            row[p] = v if v != float("-inf") else None
        rows.append(row)
    emit(rows, fmt, f"zero-cost proxies: {len(rows)} architectures of {space} on {data}")
