"""push_folder / `mergekit-het push` against the fake Hub on 127.0.0.1 (real huggingface_hub code)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from huggingface_hub._upload_pipeline import COMMIT_SIZE_SCALE, INITIAL_COMMIT_SIZE_INDEX

from hub_fixtures import ALICE, BOB, make_model
from mergekit_het.cli import main
from mergekit_het.errors import MergekitHetError
from mergekit_het.hub.card import write_merge_card
from mergekit_het.hub.upload import push_folder


def _push(hub, folder, repo_id, **kw):
    return push_folder(folder, repo_id, token=kw.pop("token", ALICE), endpoint=hub.endpoint, **kw)


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_line_error(excinfo, *parts: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and ALICE not in msg and BOB not in msg
    for part in parts:
        assert part in msg, msg
    return msg


def test_push_folder_new_repo_private_files_and_message_arrive(hub, model_dir):
    url = _push(hub, model_dir, "alice/minilm-ties", private=True, commit_message="ties merge v1")

    repo = hub.repos["alice/minilm-ties"]
    head = repo.refs["main"][-1]
    assert repo.private is True
    assert url == f"{hub.endpoint}/alice/minilm-ties/commit/{head.oid}"
    assert head.message == "ties merge v1"
    assert sorted(head.changed) == ["config.json", "model.safetensors"]
    assert {k: v for k, v in head.files.items() if k != ".gitattributes"} == _local_files(model_dir)


def test_push_folder_bare_name_goes_to_token_user_with_default_message(hub, model_dir):
    _push(hub, model_dir, "minilm")
    assert hub.repos["alice/minilm"].refs["main"][-1].message == "Upload merged with mergekit-het"


def test_push_folder_unchanged_rerun_makes_no_commit(hub, model_dir):
    first = _push(hub, model_dir, "alice/m")
    second = _push(hub, model_dir, "alice/m")
    assert second == first
    assert [c.message for c in hub.repos["alice/m"].refs["main"]] == ["initial commit", "Upload merged with mergekit-het"]


def test_push_folder_revision_creates_branch_and_leaves_main(hub, model_dir):
    _push(hub, model_dir, "alice-lab/m")
    (model_dir / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    _push(hub, model_dir, "alice-lab/m", revision="dev", commit_message="wider")

    repo = hub.repos["alice-lab/m"]
    assert repo.refs["dev"][-1].message == "wider" and repo.refs["dev"][-1].changed == ["config.json"]
    assert repo.refs["dev"][-1].files["config.json"] == (model_dir / "config.json").read_bytes()
    assert len(repo.refs["main"]) == 2 and repo.refs["main"][-1].files["config.json"] != repo.refs["dev"][-1].files["config.json"]


def test_push_folder_create_pr_commits_to_pr_ref_only(hub, model_dir):
    _push(hub, model_dir, "alice/m")
    (model_dir / "extra.json").write_text("{}")
    url = _push(hub, model_dir, "alice/m", create_pr=True, commit_message="add extra")

    repo = hub.repos["alice/m"]
    assert url == f"{hub.endpoint}/alice/m/discussions/1"
    assert repo.prs[0]["title"] == "add extra"
    assert repo.refs["refs/pr/1"][-1].changed == ["extra.json"]
    assert "extra.json" not in repo.refs["main"][-1].files

    (model_dir / "extra.json").write_text('{"more": 1}')  # continue the same PR, as docs/hub.md says
    _push(hub, model_dir, "alice/m", revision="refs/pr/1")
    assert len(repo.prs) == 1 and repo.refs["refs/pr/1"][-1].files["extra.json"] == b'{"more": 1}'


def test_push_folder_create_pr_with_revision_one_line_error(hub, model_dir):
    with pytest.raises(MergekitHetError) as excinfo:
        _push(hub, model_dir, "alice/m", create_pr=True, revision="dev")
    _one_line_error(excinfo, "--create-pr", "'dev'")
    assert hub.requests == []


def test_push_folder_merge_card_passes_hub_validation_and_loads_back(hub, model_dir, tmp_path):
    base = make_model(tmp_path / "base")
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    cfg = f"merge_method: ties\nbase_model: {base}\nmodels:\n  - model: org/expert-a\n  - model: org/expert-b\n"
    write_merge_card(model_dir, cfg, {}, str(base), ["org/expert-a", "org/expert-b"], "ties")
    _push(hub, model_dir, "alice/m")

    arrived = hub.repos["alice/m"].refs["main"][-1].files["README.md"].decode()
    card = ModelCard(arrived)
    assert card.data.base_model == ["org/expert-a", "org/expert-b"]  # the local base path is not a Hub id
    assert card.data.license == "apache-2.0" and card.data.tags == ["merge", "mergekit-het", "ties"]
    assert cfg in arrived


def test_push_folder_expert_without_card_gets_generated_card(hub, tmp_path):
    expert = make_model(tmp_path / "expert_pos")
    (expert / "expert.json").write_text(json.dumps({"task": "wordnet_pos", "mode": "full", "steps": 40}))
    _push(hub, expert, "alice/pos")

    card = ModelCard(hub.repos["alice/pos"].refs["main"][-1].files["README.md"].decode())
    assert card.data.tags == ["mergekit-het", "expert", "full", "wordnet_pos"]
    assert (expert / "README.md").read_text() == str(card)


def test_push_folder_missing_token_cli_one_line_error(hub, model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_ENDPOINT=hub.endpoint)
    proc = subprocess.run([sys.executable, "-m", "mergekit_het.cli", "push", str(model_dir), "alice/m"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: no Hugging Face token found to push to alice/m: set HF_TOKEN or run `hf auth login`"
    ]
    assert hub.requests == []


def test_push_folder_rejected_token_one_line_error(hub, model_dir):
    with pytest.raises(MergekitHetError) as excinfo:
        _push(hub, model_dir, "alice/m", token="tok-wrong")
    _one_line_error(excinfo, "HTTP 401", "rejected")
    assert "alice/m" not in hub.repos


@pytest.mark.parametrize("repo_id", ["bob/existing", "bob/new"])
def test_push_folder_someone_elses_repo_403_one_line_error(hub, model_dir, repo_id):
    hub.add_repo("bob/existing")
    with pytest.raises(MergekitHetError) as excinfo:
        _push(hub, model_dir, repo_id)
    _one_line_error(excinfo, repo_id, "user 'alice' may not write", "HTTP 403", f"'alice/{repo_id.split('/')[1]}'")
    assert sorted(hub.repos) == ["bob/existing"] and len(hub.repos["bob/existing"].refs["main"]) == 1


def test_push_folder_server_drops_mid_upload_rerun_resumes_without_duplicates(hub, tmp_path):
    # More files than the first commit of huggingface_hub's multi-commit upload takes, so the
    # upload needs two commits; the server falls over right after the first one.
    per_commit = COMMIT_SIZE_SCALE[INITIAL_COMMIT_SIZE_INDEX]
    folder = make_model(tmp_path / "sharded", n_shards=per_commit + 9)
    hub.go_down_after(1)
    with pytest.raises(MergekitHetError) as excinfo:
        _push(hub, folder, "alice/big")
    _one_line_error(excinfo, "alice/big", "HTTP 503", f"resume with `mergekit-het push {folder} alice/big`")
    first = hub.repos["alice/big"].refs["main"][1:]
    assert len(first) == 1 and len(first[0].changed) == per_commit

    hub.recover()
    _push(hub, folder, "alice/big")
    _push(hub, folder, "alice/big")  # nothing left to send: no third commit

    commits = hub.repos["alice/big"].refs["main"][1:]
    assert len(commits) == 2
    assert set(commits[0].changed).isdisjoint(commits[1].changed)
    assert sorted(commits[0].changed + commits[1].changed) == sorted(_local_files(folder))
    assert {k: v for k, v in commits[1].files.items() if k != ".gitattributes"} == _local_files(folder)


def test_push_folder_unreachable_endpoint_one_line_network_error(model_dir):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MergekitHetError) as excinfo:
        push_folder(model_dir, "alice/m", token=ALICE, endpoint=f"http://127.0.0.1:{port}")
    _one_line_error(excinfo, "network failure while pushing to alice/m", "ConnectError")


@pytest.mark.parametrize("content", [{}, {"notes.txt": "hello"}, None])
def test_push_folder_not_a_model_one_line_error(hub, tmp_path, content):
    folder = tmp_path / "notes"
    if content is not None:
        folder.mkdir()
        for name, text in content.items():
            (folder / name).write_text(text)
    with pytest.raises(MergekitHetError) as excinfo:
        _push(hub, folder, "alice/m")
    _one_line_error(excinfo, str(folder), "not a")
    assert hub.requests == []


def test_push_folder_dry_run_lists_files_and_contacts_nothing(hub, tmp_path):
    expert = make_model(tmp_path / "expert")
    (expert / "expert.json").write_text('{"task": "austen_book"}')
    listing = push_folder(expert, "alice/e", dry_run=True, token=None, endpoint=hub.endpoint)

    lines = listing.splitlines()
    size = (expert / "model.safetensors").stat().st_size
    assert lines[0].startswith(f"dry run: would upload 4 files") and "to alice/e (branch main)" in lines[0]
    assert [ln.split()[0] for ln in lines[1:5]] == ["README.md", "config.json", "expert.json", "model.safetensors"]
    assert lines[4].split()[1] == f"{size:,}"
    assert lines[5] == "  note: README.md: generated from expert.json"
    assert hub.requests == [] and not (expert / "README.md").exists()


def test_push_cli_reads_hf_endpoint_and_hf_token_from_environment(hub, model_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", BOB)
    assert main(["push", str(model_dir), "bob/merged", "--commit-message", "from the CLI"]) == 0

    head = hub.repos["bob/merged"].refs["main"][-1]
    assert head.message == "from the CLI"
    assert capsys.readouterr().out.strip() == f"{hub.endpoint}/bob/merged/commit/{head.oid}"


def _expert_with_task_vector(folder: Path) -> Path:
    expert = make_model(folder)
    (expert / "expert.json").write_text('{"task": "austen_book"}')
    (expert / "task_vector.safetensors").write_bytes((expert / "model.safetensors").read_bytes())
    (expert / "checkpoint-10").mkdir()
    (expert / "checkpoint-10" / "optimizer.pt").write_bytes(b"state")
    return expert


@pytest.mark.parametrize("kw, arrived", [
    ({}, ["README.md", "checkpoint-10/optimizer.pt", "config.json", "expert.json", "model.safetensors"]),
    ({"task_vector": True}, ["README.md", "checkpoint-10/optimizer.pt", "config.json", "expert.json",
                             "model.safetensors", "task_vector.safetensors"]),
    ({"include": ["*.json", "task_vector.safetensors"]}, ["config.json", "expert.json", "task_vector.safetensors"]),
    ({"exclude": ["checkpoint-*/*", "*.md"]}, ["config.json", "expert.json", "model.safetensors"]),
    ({"include": ["*.safetensors"], "exclude": ["model.*"]}, []),
])
def test_push_folder_expert_patterns_and_task_vector_choose_files(hub, tmp_path, kw, arrived):
    expert = _expert_with_task_vector(tmp_path / "expert")
    listing = push_folder(expert, "alice/e", dry_run=True, token=None, endpoint=hub.endpoint, **kw)
    assert [ln.split()[0] for ln in listing.splitlines()[1:] if "note:" not in ln] == arrived
    if not arrived:
        with pytest.raises(MergekitHetError) as excinfo:
            _push(hub, expert, "alice/e", **kw)
        _one_line_error(excinfo, "no file left to upload")
        return
    _push(hub, expert, "alice/e", **kw)
    assert sorted(hub.repos["alice/e"].refs["main"][-1].changed) == arrived


def test_push_folder_failed_push_changes_no_local_file_then_advice_resumes(hub, tmp_path):
    expert = _expert_with_task_vector(tmp_path / "expert")  # no card: push would generate one
    merged = make_model(tmp_path / "merged")
    write_merge_card(merged, "merge_method: linear\n", {}, None, ["a/b", "c/d"], "linear")
    (merged / "eval_results.json").write_text('{"tasks": {"pos": {"accuracy": 0.9}}}')  # the card must refresh
    before = {f: _local_files(f) for f in (expert, merged)}
    hub.go_down_after(0)
    for folder in (expert, merged):
        with pytest.raises(MergekitHetError) as excinfo:
            _push(hub, folder, "alice/x", revision="dev", exclude=["*.pt"])
        assert f"resume with `mergekit-het push {folder} alice/x --revision dev --exclude '*.pt'`" in str(excinfo.value)
        assert _local_files(folder) == before[folder]

    hub.recover()
    monkey_env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": ALICE}
    os.environ.update(monkey_env)
    try:
        assert main(["push", str(merged), "alice/x", "--revision", "dev", "--exclude", "*.pt"]) == 0
    finally:
        for key in monkey_env:
            os.environ.pop(key)
    card = (merged / "README.md").read_text()  # written locally only now, as uploaded
    assert "| pos | 0.9000 |" in card
    assert hub.repos["alice/x"].refs["dev"][-1].files["README.md"].decode() == card


def test_merge_push_to_hub_failure_prints_push_command_that_resumes(hub, tmp_path, monkeypatch, capsys):
    a, b = make_model(tmp_path / "a"), make_model(tmp_path / "b")
    config = tmp_path / "linear.yml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 1.0}}\n"
                      f"  - model: {b}\n    parameters: {{weight: 1.0}}\ndtype: float32\n")
    out = tmp_path / "merged_out"
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", ALICE)
    hub.go_down_after(0)
    assert main(["merge", str(config), str(out), "--quiet", "--push-to-hub", "alice/lin", "--private"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    advice = err.split("resume with `", 1)[1].split("`", 1)[0]
    assert advice == f"mergekit-het push {out} alice/lin --private"
    assert main(["merge", str(config), str(out), "--quiet"]) == 2  # re-running the merge would not do

    hub.recover()
    assert main(advice.split()[1:]) == 0
    head = hub.repos["alice/lin"].refs["main"][-1]
    assert hub.repos["alice/lin"].private is True
    assert {k for k in head.files if k != ".gitattributes"} == set(_local_files(out))
