"""The seeded CPU server's pure parts: per-choice seeds and request validation."""

from __future__ import annotations

import pytest

from kubefusion_trainer.seeded_server import BadRequest, choice_seed, read_params


def test_choice_seed_depends_on_seed_plus_index_and_the_prompt_only() -> None:
    assert choice_seed(5, 2, [1, 2, 3]) == choice_seed(7, 0, [1, 2, 3]) == choice_seed(6, 1, [1, 2, 3])
    assert choice_seed(5, 0, [1, 2, 3]) != choice_seed(5, 1, [1, 2, 3])
    assert choice_seed(5, 0, [1, 2, 3]) != choice_seed(5, 0, [1, 2, 4])
    assert 0 <= choice_seed(5, 0, [1]) < 2**63


def test_read_params_fills_defaults_and_keeps_the_seed() -> None:
    params = read_params({"model": "/m", "messages": [{"role": "user", "content": "hi"}], "seed": 3}, "/m")
    assert params["seed"] == 3 and params["n"] == 1
    assert (params["temperature"], params["top_p"], params["repetition_penalty"]) == (1.0, 1.0, 1.0)
    unseeded = [read_params({"messages": [{"role": "user", "content": "x"}]}, "/m")["seed"] for _ in range(3)]
    assert len(set(unseeded)) == 3  # no seed: random, as on any server


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"messages": []}, "messages", 400),
        ({"n": 0}, "n", 400),
        ({"n": 65}, "n", 400),
        ({"temperature": -1}, "temperature", 400),
        ({"top_p": 0}, "top_p", 400),
        ({"seed": 1.5}, "seed", 400),
        ({"model": "/other"}, "/other", 404),
    ],
)
def test_bad_requests_name_the_field(body: dict, field: str, status: int) -> None:
    request = {"model": "/m", "messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(BadRequest, match=field) as failure:
        read_params(request, "/m")
    assert failure.value.status == status
