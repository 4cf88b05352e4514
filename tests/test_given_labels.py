"""Tracking-only mode's input: label images checked and renumbered, handed on as a
segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from livetrack.errors import BadFrame
from livetrack.given_labels import GivenLabels, given_label_image


def test_labels_up_to_the_pixel_count_are_kept_as_they_are() -> None:
    lab = np.array([[0, 3], [3, 4]], np.uint16)
    out, renumbered = given_label_image(lab)
    assert not renumbered
    assert out.dtype == np.int32
    assert out.tolist() == [[0, 3], [3, 4]]


def test_huge_labels_are_renumbered_in_increasing_order_keeping_background() -> None:
    lab = np.array([[0, 2**31 + 5], [70_000, 2**31 + 5]], np.uint32)
    out, renumbered = given_label_image(lab)
    assert renumbered
    assert out.tolist() == [[0, 2], [1, 2]]
    no_background = np.array([[900, 500]], np.int64)
    assert given_label_image(no_background)[0].tolist() == [[2, 1]]


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (np.array([[0, -1]], np.int32), "negative labels"),
        (np.array([[0.0, 1.0]], np.float32), "must hold integers"),
    ],
)
def test_bad_label_images_are_bad_frames(labels: np.ndarray, words: str) -> None:
    with pytest.raises(BadFrame, match=words):
        given_label_image(labels)


def test_given_labels_segment_to_exactly_those_objects() -> None:
    mask = np.zeros((6, 6), np.int32)
    mask[0:2, 0:2] = 1
    mask[3:6, 3:6] = 4
    seg = GivenLabels(mask).predict(np.zeros((6, 6), np.uint16))
    assert seg.mask is mask
    assert seg.detections.labels.tolist() == [1, 4]
    assert seg.detections.areas.tolist() == [4, 9]
