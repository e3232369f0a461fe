"""Prompt datasets: files checked line by line, the workload's rules, prompts carried in the
run plan, and a real master + worker run whose requests carry the datasets' prompts."""

from __future__ import annotations

import json
from pathlib import Path
from random import Random
from typing import Any

import anthropic
import pytest
import yaml

from loadkit.client import StreamingClient
from loadkit.datasets import (
    MAX_PROMPTS,
    DatasetPicker,
    DatasetSource,
    Prompt,
    dataset_names,
    read_dataset,
)
from loadkit.emulator.launcher import EmulatorProcess
from loadkit.prompts import PromptFactory
from loadkit.workload import WorkloadError, load_workload, parse_workload

from . import adherence
from .runs import ROOT, run_locust, settled_emulator

SHIPPED = ROOT / "workloads" / "datasets"
GOOD = '{"messages": [{"role": "user", "content": "Hello there"}]}'
FAST = {"ttft_base_ms": 40, "prefill_tokens_per_s": 100_000, "decode_tokens_per_s": 2000}
FAST |= {"ttft_jitter": 0.0, "decode_jitter": 0.0}
EMULATOR: dict[str, Any] = {
    "models": {m: FAST for m in ("claude-haiku-4-5", "claude-sonnet-4-6")},
    "output_tokens": {"kind": "uniform", "min": 20, "max": 300},
}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not JSON"),
        ("[1, 2]", "line 2: expected a JSON object with 'messages'"),
        ('{"messages": []}', "line 2: messages: List should have at least 1 item"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
            "line 2: messages.1.role: 'user' where 'assistant' was expected (roles alternate, "
            "starting with user)",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, '
            '{"role": "assistant", "content": "b"}]}',
            "line 2: messages: the last message must be the user's (it is answered)",
        ),
        (
            '{"messages": [{"role": "user", "content": "  "}]}',
            "line 2: messages.0: content: must hold more than white space",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}], "temperature": 1}',
            "line 2: temperature: Extra inputs are not permitted",
        ),
        (
            '{"messages": [{"role": "system", "content": "a"}]}',
            "line 2: messages.0.role: Input should be 'user' or 'assistant'",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}], "system": ""}',
            "line 2: system: must hold more than white space",
        ),
        (
            '{"messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]}',
            "line 2: messages.0.content.0: text must hold more than white space",
        ),
        (
            '{"messages": [{"role": "user", "content": [{"type": "image", "text": "a"}]}]}',
            "line 2: messages.0.content.0.type: Input should be 'text'",
        ),
        (
            '{"messages": [{"role": "user", "content": 5}]}',
            "line 2: messages.0.content: Input should be a valid string",
        ),
    ],
)
def test_a_bad_line_is_named_by_file_line_and_field(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n{line}\n{GOOD}\n")
    with pytest.raises(ValueError) as caught:
        read_dataset(path)
    assert str(caught.value).startswith(f"dataset {path}, ")
    assert message in str(caught.value)


def test_empty_missing_and_oversized_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: empty"):
        read_dataset(empty)
    with pytest.raises(ValueError, match=r"cannot read dataset .*missing\.jsonl"):
        read_dataset(tmp_path / "missing.jsonl")
    many = tmp_path / "many.jsonl"
    many.write_text(f"{GOOD}\n" * (MAX_PROMPTS + 1))
    with pytest.raises(ValueError, match=f"more than {MAX_PROMPTS} prompts .* sample it down"):
        read_dataset(many)


def _write_workload(folder: Path, **changes: Any) -> Path:
    data: dict[str, Any] = {
        "name": "d",
        "models": [{"model": "claude-haiku-4-5"}],
        "datasets": [{"path": "data/one.jsonl", "weight": 2}, {"path": "data/two.jsonl"}],
    }
    data.update(changes)
    path = folder / "workload.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"prompt_tokens": {"kind": "fixed", "value": 10}},
            "prompt_tokens: datasets replace synthetic prompts, so prompt_tokens would not be "
            "used; remove it or the datasets",
        ),
        (
            {
                "models": [
                    {"model": "claude-haiku-4-5", "prompt_tokens": {"kind": "fixed", "value": 5}}
                ]
            },
            "models.0.prompt_tokens: datasets replace synthetic prompts",
        ),
        (
            {"datasets": [{"path": "data/one.jsonl"}, {"path": "other/one.jsonl"}]},
            "datasets: the name 'one' is used twice (give each a name)",
        ),
        ({"datasets": [{"path": "data/one.jsonl", "weight": 0}]}, "datasets: weights sum to zero"),
        (
            {"datasets": [{"prompts": [{"messages": [{"role": "user", "content": "x"}]}]}]},
            "a dataset given inline needs a name",
        ),
        ({"datasets": [{"name": "x"}]}, "a dataset needs a path (a JSONL file) or prompts"),
        (
            {"datasets": [{"path": "data/nowhere.jsonl"}]},
            "cannot read dataset",
        ),
        (
            {"datasets": [{"path": "data/one.jsonl", "name": "has space"}]},
            "datasets.0.name: String should match pattern",
        ),
    ],
)
def test_workload_rules_for_datasets(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "one.jsonl").write_text(f"{GOOD}\n")
    (tmp_path / "data" / "two.jsonl").write_text(f"{GOOD}\n")
    with pytest.raises(WorkloadError, match=r"workload .*workload\.yaml") as caught:
        load_workload(_write_workload(tmp_path, **changes))
    assert message in str(caught.value)


def test_the_plan_carries_the_prompts_and_needs_no_file(tmp_path: Path) -> None:
    """Paths are relative to the workload file; once loaded, the workload as the run plan
    carries it (its JSON dump) holds every prompt: a worker parses it without the files."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "one.jsonl").write_text(
        GOOD + "\n"
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", '
        '"cache_control": {"type": "ephemeral"}}]}], "system": "Be brief."}\n'
    )
    (tmp_path / "data" / "two.jsonl").write_text(GOOD + "\n")
    workload = load_workload(_write_workload(tmp_path))
    plan = json.loads(json.dumps(workload.model_dump(mode="json", by_alias=True)))
    for path in (tmp_path / "data").iterdir():
        path.unlink()
    again = parse_workload(plan, "plan")
    assert again == workload
    assert dataset_names(plan) == ["one", "two"]
    one = again.datasets[0]
    assert one.weight == 2 and one.prompts is not None and len(one.prompts) == 2
    assert one.prompts[1].request_messages() == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}],
        }
    ]
    assert one.prompts[1].request_system() == "Be brief."


def _sizes(emulator: EmulatorProcess, model: str, path: Path) -> set[int]:
    """count_tokens of each prompt of a dataset file, asked of the emulator through the SDK."""
    client = anthropic.Anthropic(base_url=emulator.base_url, api_key="test-key")
    sizes = set()
    for prompt in read_dataset(path):
        kwargs: dict[str, Any] = {"model": model, "messages": prompt.request_messages()}
        if prompt.system is not None:
            kwargs["system"] = prompt.request_system()
        sizes.add(client.messages.count_tokens(**kwargs).input_tokens)
    client.close()
    return sizes


@pytest.mark.slow
def test_a_master_and_worker_run_sends_the_datasets_prompts(tmp_path: Path) -> None:
    """The shipped datasets through a master and one worker against an emulator: every
    request's record names its dataset and carries the count_tokens size of one of that
    dataset's prompts, which is what the emulator billed (plus the length instruction on the
    requests with an output target); the emulator served every request; by_dataset adds up to
    the totals; the adherence figures merged from the worker equal its records'."""
    workload = {
        "name": "datasets-test",
        "models": [
            {
                "model": "claude-haiku-4-5",
                "output_tokens_target": {"kind": "uniform", "min": 60, "max": 150},
            },
            {"model": "claude-sonnet-4-6"},
        ],
        "datasets": [
            {"path": str(SHIPPED / "support.jsonl"), "weight": 2},
            {"path": str(SHIPPED / "general.jsonl"), "weight": 1, "name": "everyday"},
        ],
        "max_tokens": {"kind": "fixed", "value": 200},
    }
    path = tmp_path / "workload.yaml"
    path.write_text(yaml.safe_dump(workload))
    with EmulatorProcess(config=EMULATOR, seed=5) as emulator:
        result, summary = run_locust(
            tmp_path, "-u", "6", "-r", "6", "-t", "3s", "--stop-timeout", "5", "--processes", "1",
            "--workload",
            str(path), "--target-url", emulator.base_url, "--records",
            str(tmp_path / "records.jsonl"), env={"ANTHROPIC_API_KEY": "test-key"},
        )  # fmt: skip
        stats, served = settled_emulator(emulator.base_url)
        sizes = {
            (model, name): _sizes(emulator, model, SHIPPED / f"{stem}.jsonl")
            for model in ("claude-haiku-4-5", "claude-sonnet-4-6")
            for name, stem in (("support", "support"), ("everyday", "general"))
        }
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary is not None
    assert summary["accounting"]["mismatches"] == []
    records = [
        json.loads(line) for line in (tmp_path / "records-worker0.jsonl").read_text().splitlines()
    ]
    assert len(records) == summary["total"]["requests"] + summary["total"]["cancelled"] > 20
    assert {r["dataset"] for r in records} == {"support", "everyday"}
    served_ids = {s["request_id"] for s in served}
    for r in records:
        assert r["prompt_tokens_target"] in sizes[(r["model"], r["dataset"])], r
        if r["outcome"] != "ok":
            continue
        assert r["request_id"] in served_ids
        if r["output_target"]:
            assert r["input_tokens"] > r["prompt_tokens_target"]  # the length instruction
        else:
            assert r["input_tokens"] == r["prompt_tokens_target"]
    # every stream was let finish (--stop-timeout): the emulator billed what the records say
    assert summary["total"]["cancelled"] == 0
    assert stats["totals"]["input_tokens"] == sum(r["input_tokens"] for r in records)
    # by_dataset: workload order, and the groups add up to the totals
    by_dataset = summary["by_dataset"]
    assert [(g["dataset"], g["index"]) for g in by_dataset] == [("support", 0), ("everyday", 1)]
    total = summary["total"]
    for key in ("requests", "ok", "cancelled", "input_tokens", "output_tokens"):
        assert sum(g[key] for g in by_dataset) == total[key], key
    assert sum(g["cost_usd"] for g in by_dataset) == pytest.approx(total["cost_usd"], abs=1e-5)
    for g in by_dataset:
        mine = [r for r in records if r["dataset"] == g["dataset"]]
        assert g["requests"] + g["cancelled"] == len(mine)
        adherence.check(g.get("output_target"), mine)
    adherence.check(total.get("output_target"), records)
    assert "by prompt dataset" in result.stderr
    printed = [x.split() for x in result.stderr.splitlines()]
    assert ["support", str(by_dataset[0]["requests"]), str(by_dataset[0]["ok"])] in [
        x[:3] for x in printed
    ]


def test_each_distinct_prompt_is_counted_once_per_model_with_the_run_prefix(
    emulator: EmulatorProcess,
) -> None:
    """The picker counts every distinct prompt once per model, with the run's shared system
    prefix before the prompt's own system; a draw carries that count and that system."""
    lines = [
        {"messages": [{"role": "user", "content": "What is a token bucket?"}]},
        {"messages": [{"role": "user", "content": "What is a token bucket?"}]},  # a repeat
        {"messages": [{"role": "user", "content": "Hi"}], "system": "Answer like a pirate."},
    ]
    sources = [DatasetSource(name="d", prompts=[Prompt.model_validate(x) for x in lines])]
    models = ["claude-haiku-4-5", "claude-sonnet-4-6"]
    client = StreamingClient(emulator.base_url, "test-key")
    prompts = PromptFactory(seed=1, system_prefix_tokens=1200, cache_prefix=True)
    try:
        for model in models:
            prompts.calibrate(model, client.count_tokens)
        picker = DatasetPicker(sources, models, client.count_tokens, prompts.system, Random(3))
        assert picker.counted == 2 * len(models)  # the repeat is not counted again
        seen = set()
        for _ in range(40):
            model = models[len(seen) % 2]
            chosen = picker.draw(model)
            prefix = prompts.system(model)
            own = [{"type": "text", "text": "Answer like a pirate."}]
            pirate = chosen.messages[0]["content"] == "Hi"
            assert chosen.system == ([*prefix, *own] if pirate else prefix)
            assert chosen.tokens == client.count_tokens(model, chosen.messages, chosen.system)
            assert (chosen.dataset, chosen.index) == ("d", 0)
            seen.add((model, pirate))
        assert len(seen) == 4
    finally:
        client.close()
