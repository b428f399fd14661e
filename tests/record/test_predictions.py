"""A response is paired with the prediction of the latest decision before its onset that chose its image."""

from __future__ import annotations

from closedloop.record.predictions import paired_predictions


def test_the_latest_decision_before_the_onset_predicts_it():
    selections = [{"chosen": [3, 4], "predicted": [[1.0], [2.0]], "time": 10.0},
                  {"chosen": [3], "predicted": [[5.0]], "time": 20.0},
                  {"chosen": [4], "time": 21.0},  # no predictions logged
                  {"chosen": [6], "predicted": [[7.0]], "time": 40.0}]
    responses = [{"pool_index": 3, "onset": 15.0}, {"pool_index": 3, "onset": 25.0},
                 {"pool_index": 4, "onset": 30.0}, {"pool_index": 6, "onset": 35.0},  # chosen only after it
                 {"pool_index": 9, "onset": 36.0}]
    pairs = paired_predictions(selections, responses)
    assert [(r["onset"], k, p) for r, k, p in pairs] == [(15.0, 0, [1.0]), (25.0, 1, [5.0]), (30.0, 0, [2.0])]


def test_a_decision_without_a_time_counts_as_before_every_onset():
    pairs = paired_predictions([{"chosen": [1], "predicted": [[0.5, 1.5]]}], [{"pool_index": 1, "onset": -1e9}])
    assert [(k, p) for _, k, p in pairs] == [(0, [0.5, 1.5])]
