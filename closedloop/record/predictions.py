"""Which prediction a response answers: the model's expectation of an image, logged by the decision
that chose it (``selections.jsonl`` ``predicted``), paired with the response it then evoked."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable


def paired_predictions(selections: list[dict], responses: Iterable[dict]) -> list[tuple[dict, int, list[float]]]:
    """Each response whose image a decision predicted, with that decision (its position in
    ``selections``) and its prediction (one mean count per recorded unit, spikes in the window).

    The prediction is the latest decision's, logged at or before the presentation's onset, that
    chose the image (a decision logged without a time counts as before every onset); a response no
    such decision predicted is left out.
    """
    decided: dict[int, list[tuple[float, int, list[float]]]] = defaultdict(list)
    for k, selection in enumerate(selections):
        for pool_index, predicted in zip(selection["chosen"], selection.get("predicted") or []):
            decided[pool_index].append((selection.get("time", float("-inf")), k, predicted))
    pairs = []
    for response in responses:
        made = [(k, predicted) for t, k, predicted in decided.get(response["pool_index"], ()) if t <= response["onset"]]
        if made:
            pairs.append((response, *made[-1]))
    return pairs
