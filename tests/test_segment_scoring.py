"""Personalised segmentation of images (several objects, ids kept, presence) and the streamed
gallery scorer (equal to min-max normalising the whole gallery's maps at once)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from colour_source import ColourSource, box_image

from pdmtrack.config import MatchConfig
from pdmtrack.errors import InputError
from pdmtrack.features.types import PDMFeatures
from pdmtrack.personal.scoring import QueryScorer
from pdmtrack.personal.segmenter import ImageSegmenter
from pdmtrack.tracking.matching import appearance_map, minmax, semantic_map

CPU = torch.device("cpu")


def test_segmenter_keeps_object_ids_and_judges_presence() -> None:
    reference = box_image(64, 64, [("red", 0, 0, 16, 16), ("blue", 32, 32, 64, 64)])
    labels = np.zeros((64, 64), dtype=np.uint8)
    labels[0:16, 0:16] = 3
    labels[32:64, 32:64] = 7
    segmenter = ImageSegmenter(ColourSource(), reference, labels, [None], MatchConfig(), CPU, presence_threshold=0.5)
    target = box_image(64, 64, [("blue", 0, 0, 24, 24), ("red", 40, 40, 56, 56)])
    result = segmenter(target)
    assert result.labels.dtype == np.uint8 and set(np.unique(result.labels)) == {0, 3, 7}
    assert result.labels[48, 48] == 3 and result.labels[10, 10] == 7 and result.labels[30, 60] == 0
    assert [o.object_id for o in result.objects] == [3, 7]
    assert all(o.present and o.presence == pytest.approx(1.0, abs=1e-3) for o in result.objects)
    # Only blue in the image: the red object is judged absent and left out of the mask.
    only_blue = segmenter(box_image(64, 64, [("blue", 8, 8, 40, 40)]))
    red, blue = only_blue.objects
    assert not red.present and red.presence == pytest.approx(0.0, abs=1e-3) and blue.present
    assert set(np.unique(only_blue.labels)) == {0, 7}


def test_segmenter_errors() -> None:
    image = box_image(32, 32, [("red", 0, 0, 16, 16)])
    with pytest.raises(InputError, match="^mask: "):
        ImageSegmenter(ColourSource(), image, np.zeros((32, 32), np.uint8), [None], MatchConfig(), CPU)
    with pytest.raises(InputError, match="^classes: "):
        ImageSegmenter(ColourSource(), image, None, [None], MatchConfig(), CPU)


def test_streamed_scores_equal_joint_normalisation() -> None:
    generator = torch.Generator().manual_seed(0)
    reference = PDMFeatures(
        appearance=torch.randn(1, 6, 4, 4, generator=generator),
        semantic=torch.randn(1, 5, 4, 4, generator=generator),
        class_vectors=torch.randn(2, 5, generator=generator),
    )
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1:3, 1:3] = True
    batches = [
        PDMFeatures(appearance=torch.randn(n, 6, 4, 4, generator=generator), semantic=torch.randn(n, 5, 4, 4, generator=generator))
        for n in (3, 1, 2)
    ]
    scorer = QueryScorer(reference, mask, 1, MatchConfig())
    for batch in batches:
        scorer.add(batch)
    everything = PDMFeatures.cat(batches)
    appearance = appearance_map(reference.appearance[0], mask, everything.appearance)
    semantic = semantic_map(reference.class_vectors[1], everything.semantic)
    joint = (minmax(appearance, dims=(0, 1, 2)) + minmax(semantic, dims=(0, 1, 2))) / 2
    np.testing.assert_allclose(scorer.scores(), joint.mean(dim=(1, 2)).numpy(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scorer.maps(batches[1]), joint[3:4])
    appearance_only = QueryScorer(reference, mask, None, MatchConfig())
    appearance_only.add(everything)
    np.testing.assert_allclose(appearance_only.scores(), minmax(appearance, dims=(0, 1, 2)).mean(dim=(1, 2)).numpy(), rtol=1e-5, atol=1e-6)
