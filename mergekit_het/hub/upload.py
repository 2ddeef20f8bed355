"""Push a model folder (merge or expert) to the Hugging Face Hub with `huggingface_hub.HfApi`.

`push_folder` checks the folder is a model, makes sure it carries a card, creates the repository
(and branch) if missing, then calls `HfApi.upload_folder`, which streams the files in several
commits for large folders and resumes an interrupted upload when the same call is repeated:
files whose content already matches the remote are skipped, so a re-run never commits them again.
The token comes from `token`, else `HF_TOKEN` / the credential store (`huggingface_hub.get_token`);
it is never printed. The endpoint comes from `endpoint`, else `HF_ENDPOINT`, read at call time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx2  # the HTTP transport of huggingface_hub: its network errors are what a dropped upload raises
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from ..errors import MergekitHetError
from .card import CARD_FILE, EXPERT_FILE, load_eval_results, read_json_object, refresh_eval_results, write_expert_card

RESUME_HINT = "re-run the same command to resume: files already on the Hub are skipped, nothing is committed twice"


def check_model_folder(folder: Path) -> None:
    """Raise unless `folder` holds a model: config.json, adapter_config.json or *.safetensors."""
    if not folder.is_dir():
        raise MergekitHetError(f"{folder}: not a folder; expected a model folder (config.json + *.safetensors)")
    if not ((folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()
            or any(folder.glob("*.safetensors"))):
        raise MergekitHetError(
            f"{folder}: not a model folder (no config.json, adapter_config.json or *.safetensors); "
            "pass the output folder of `mergekit-het merge` or of a fine-tuning run"
        )


def upload_files(folder: Path) -> list[tuple[str, int]]:
    """(path in repo, size in bytes) of every file `HfApi.upload_folder` would send, sorted."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    return [(name, files[name]) for name in sorted(filter_repo_objects(files, ignore_patterns=DEFAULT_IGNORE_PATTERNS))]


def prepare_card(folder: Path, *, write: bool) -> str | None:
    """Give the folder an up-to-date card before upload; returns what was (or would be) done.

    An expert without README.md gets one from expert.json; a mergekit-het card gets the results
    of `eval_results.json` when they differ from what it shows."""
    card, expert = folder / CARD_FILE, folder / EXPERT_FILE
    if not card.is_file():
        if not expert.is_file():
            return None
        expert_json = read_json_object(expert)
        if write:
            write_expert_card(folder, expert_json)
        return f"{CARD_FILE}: generated from {EXPERT_FILE}"
    results = load_eval_results(folder)
    if results is not None and refresh_eval_results(folder, results, write=write):
        return f"{CARD_FILE}: evaluation results updated from eval_results.json"
    return None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def _hub_errors(repo_id: str, endpoint: str, user: str | None) -> Iterator[None]:
    """Turn huggingface_hub / network failures into one-line `MergekitHetError`s."""
    try:
        yield
    except HfHubHTTPError as exc:
        code = exc.response.status_code
        said = _one_line(exc.server_message or str(exc).splitlines()[0])
        who = f"user '{user}'" if user else "this token"
        if code == 401:
            msg = (f"the Hugging Face token was rejected by {endpoint} (HTTP 401: {said}); "
                   "set HF_TOKEN or run `hf auth login` with a token that has write access")
        elif code == 403:
            mine = f"; push to your own namespace, e.g. '{user}/{repo_id.split('/')[-1]}'" if user else ""
            msg = f"{repo_id}: {who} may not write to this repository (HTTP 403: {said}){mine}"
        elif isinstance(exc, RevisionNotFoundError):
            msg = f"{repo_id}: revision not found (HTTP 404: {said})"
        elif isinstance(exc, RepositoryNotFoundError):
            msg = f"{repo_id}: repository not found or not visible to {who} (HTTP 404: {said})"
        else:
            msg = f"push to {repo_id} failed: HTTP {code} from {endpoint} ({said}); {RESUME_HINT}"
        raise MergekitHetError(msg) from None
    except httpx2.TransportError as exc:
        raise MergekitHetError(
            f"network failure while pushing to {repo_id} at {endpoint} ({type(exc).__name__}: {_one_line(exc)}); "
            f"{RESUME_HINT}"
        ) from None


def _listing(folder: Path, repo_id: str, target: str, files: list[tuple[str, int]], card_note: str | None) -> str:
    width = max((len(name) for name, _ in files), default=0)
    lines = [f"dry run: would upload {len(files)} files ({sum(s for _, s in files):,} bytes) "
             f"from {folder} to {repo_id} ({target})"]
    lines += [f"  {name:<{width}}  {size:>14,} B" for name, size in files]
    if card_note:
        lines.append(f"  note: {card_note}")
    return "\n".join(lines)


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload `folder` to the Hub model repository `repo_id` (`name` alone means the token's user).

    Returns the commit URL (the pull-request URL with `create_pr`), or with `dry_run` the listing
    of what would be uploaded (nothing is contacted or written)."""
    folder = Path(folder)
    check_model_folder(folder)
    if create_pr and revision:
        raise MergekitHetError(
            f"--create-pr opens a pull request against the default branch, got --revision {revision!r}; "
            "drop one of them (to resume an interrupted PR upload, pass --revision refs/pr/N alone)"
        )
    target = "new pull request" if create_pr else f"branch {revision or 'main'}"
    if dry_run:
        return _listing(folder, repo_id, target, upload_files(folder), prepare_card(folder, write=False))
    token = token or get_token()
    if not token:
        raise MergekitHetError(
            f"no Hugging Face token found to push to {repo_id}: set HF_TOKEN or run `hf auth login`"
        )
    if card_note := prepare_card(folder, write=True):
        print(card_note)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(repo_id, endpoint, None):
        user = api.whoami()["name"]
    if "/" not in repo_id:
        repo_id = f"{user}/{repo_id}"
    with _hub_errors(repo_id, endpoint, user):
        # Asked first: on a 403 for an existing repo, create_repo(exist_ok=True) builds a RepoUrl that
        # only parses for the default endpoint, which breaks HF_ENDPOINT / endpoint= setups.
        if not api.repo_exists(repo_id):
            api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and not revision.startswith("refs/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        try:
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message or f"Upload {folder.resolve().name} with mergekit-het",
                revision=revision,
                create_pr=create_pr,
            )
        except ValueError as exc:  # the Hub's verdict on README.md metadata
            if "README.md" not in str(exc):
                raise
            raise MergekitHetError(f"{folder / CARD_FILE}: {_one_line(exc)}") from None
    return info.pr_url or info.commit_url
