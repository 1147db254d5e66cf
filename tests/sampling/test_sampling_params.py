"""SamplingParams validation: each bad field gives a one-line error naming it."""
import pytest

from resd_jax.sampling import SamplingParams


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": -0.1}, "temperature must be a finite number >= 0"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k must be an integer >= 0"),
    ({"top_k": 2.5}, "top_k"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ({"stop_token_ids": (1, -2)}, "stop_token_ids must be non-negative integers"),
    ({"stop_token_ids": 5}, "stop_token_ids must be a list or tuple"),
    ({"stop_strings": "###"}, "stop_strings must be a list or tuple"),
    ({"stop_strings": ("",)}, "stop_strings must be non-empty strings"),
    ({"seed": "1"}, "seed must be an integer"),
])
def test_bad_values_raise_one_line_errors(kwargs, match):
  with pytest.raises(ValueError, match=match) as e:
    SamplingParams(**kwargs)
  assert "\n" not in str(e.value) and str(e.value).startswith("SamplingParams:")


def test_good_values_and_lists_become_tuples():
  sp = SamplingParams(temperature=0, top_p=1, top_k=5, stop_token_ids=[3, 4], stop_strings=["</answer>"])
  assert sp.greedy and sp.stop_token_ids == (3, 4) and sp.stop_strings == ("</answer>",)
  assert sp.replace(temperature=0.7).temperature == 0.7 and not sp.replace(temperature=0.7).greedy
  with pytest.raises(ValueError, match="top_p"):
    sp.replace(top_p=2.0)
