import numpy as np

from closedloop.align.windows import ResponseAligner


def test_counts_fall_in_the_window_per_unit():
    aligner = ResponseAligner([(1, 1), (2, 1)], start=0.05, end=0.15)
    aligner.add_onset(0, 10.0, {"stimulus": "a"})
    times = np.array([10.01, 10.05, 10.10, 10.1499, 10.15, 10.12])
    channels = np.array([1, 1, 1, 1, 1, 2])
    aligner.add_spikes(times, channels, np.ones(6, int))
    response, = aligner.complete(10.2)
    # 10.01 is before the window, 10.15 is its (open) end.
    assert response.counts.tolist() == [3, 1]
    assert response.info == {"stimulus": "a"}


def test_a_presentation_completes_only_after_its_window_ends():
    aligner = ResponseAligner([(1, 1)], 0.05, 0.15)
    aligner.add_onset(0, 1.0)
    assert aligner.complete(1.149) == []
    assert aligner.pending == 1
    assert [r.index for r in aligner.complete(1.15)] == [0]
    assert aligner.pending == 0


def test_spikes_arriving_in_chunks_and_overlapping_windows():
    aligner = ResponseAligner([(3, 2)], 0.0, 0.2)
    aligner.add_onset(0, 0.0)
    aligner.add_onset(1, 0.1)
    aligner.add_spikes(np.array([0.05, 0.15]), np.array([3, 3]), np.array([2, 2]))
    first = aligner.complete(0.2)
    aligner.add_spikes(np.array([0.25]), np.array([3]), np.array([2]))
    second = aligner.complete(0.31)
    assert first[0].counts.tolist() == [2]
    assert second[0].counts.tolist() == [2]  # 0.15 is shared by both windows


def test_unknown_units_are_counted_not_attributed():
    aligner = ResponseAligner([(1, 1)], 0.0, 1.0)
    aligner.add_onset(0, 0.0)
    aligner.add_spikes(np.array([0.5, 0.6]), np.array([1, 9]), np.array([1, 1]))
    assert aligner.complete(1.0)[0].counts.tolist() == [1]
    assert aligner.unknown_spikes == 1


def test_windows_overlapping_a_gap_are_flagged_not_silently_zero():
    aligner = ResponseAligner([(1, 1)], 0.05, 0.15)
    for i, onset in enumerate([10.0, 10.2, 10.4]):
        aligner.add_onset(i, onset, {"role": "chosen"})
    aligner.add_spikes(np.array([10.1, 10.5]), np.array([1, 1]), np.array([1, 1]))
    aligner.add_gap(10.27, 10.30)  # inside presentation 1's window [10.25, 10.35)
    responses = aligner.complete(11.0)
    assert [r.info.get("gap", False) for r in responses] == [False, True, False]
    assert [r.counts.tolist() for r in responses] == [[1], [0], [1]]
    assert responses[1].info["role"] == "chosen"  # what the presenter attached is kept
