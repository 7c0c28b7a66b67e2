"""Seed 001's quality band: ±0.5% of the baseline's value, shown as an absolute and a relative delta."""
import pytest

from leantrain.experiments.quality import quality_delta


@pytest.mark.parametrize("value,baseline,higher,expected", [
    (0.80, 0.81, True, "-0.0100 (-1.23%) ▼ worse ⚠ outside ±0.5%"),
    (0.812, 0.81, True, "+0.0020 (+0.25%) ▲ better, within ±0.5%"),
    (0.83, 0.81, True, "+0.0200 (+2.47%) ▲ better, outside ±0.5%"),
    (0.81, 0.81, True, "+0.0000 (+0.00%) = same, within ±0.5%"),
    (9.0, 10.0, False, "-1.0000 (-10.00%) ▲ better, outside ±0.5%"),  # perplexity: lower is better
    (10.04, 10.0, False, "+0.0400 (+0.40%) ▼ worse, within ±0.5%"),
])
def test_delta_is_rendered_absolute_relative_with_direction_and_band(value, baseline, higher, expected):
    assert quality_delta(value, baseline, higher).render() == expected


def test_a_zero_baseline_has_no_relative_delta():
    delta = quality_delta(0.1, 0.0, True)
    assert delta.relative is None and not delta.within_band and "n/a" in delta.render()
