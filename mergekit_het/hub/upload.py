"""Push a model folder (merge or expert) to the Hugging Face Hub with `huggingface_hub.HfApi`.

`push_folder` checks the folder is a model, stages it (a temporary folder of links to its files,
where the card is generated or refreshed, so that the model folder itself is written only once
the upload succeeded), creates the repository (and branch) if missing, then calls
`HfApi.upload_folder`, which streams the files in several commits for large folders and resumes
an interrupted upload when the same call is repeated: files whose content already matches the
remote are skipped, so a re-run never commits them again. `include` / `exclude` are glob patterns
(`allow_patterns` / `ignore_patterns`); an expert's `task_vector.safetensors` (θ₀ + τ, as large as
the model) stays home unless `task_vector` is set or an `include` pattern names it.
The token comes from `token`, else `HF_TOKEN` / the credential store (`huggingface_hub.get_token`);
it is never printed. The endpoint comes from `endpoint`, else `HF_ENDPOINT`, read at call time.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx2  # the HTTP transport of huggingface_hub: its network errors are what a dropped upload raises
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from ..errors import MergekitHetError
from ..io.resolve import TASK_VECTOR_FILE
from .card import CARD_FILE, EXPERT_FILE, load_eval_results, read_json_object, refresh_eval_results, write_expert_card


def resume_hint(folder: Path, repo_id: str, options: list[str]) -> str:
    """The command that resumes an interrupted upload (a `merge --push-to-hub` included: re-running
    the merge would stop at its existing output)."""
    command = shlex.join(["mergekit-het", "push", str(folder), repo_id, *options])
    return f"resume with `{command}`: files already on the Hub are skipped, nothing is committed twice"


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


def upload_patterns(folder: Path, include: list[str] | None, exclude: list[str] | None,
                    task_vector: bool) -> tuple[list[str] | None, list[str]]:
    """(allow_patterns, ignore_patterns) of the upload: the user's, huggingface_hub's defaults,
    and an expert's task vector unless asked for (`task_vector`, or named as such in `include`:
    a wildcard such as `*.safetensors` means the model's weights, not θ₀ + τ beside them)."""
    ignore = [*DEFAULT_IGNORE_PATTERNS, *(exclude or [])]
    asked = task_vector or TASK_VECTOR_FILE in (include or [])
    if (folder / EXPERT_FILE).is_file() and not asked:
        ignore.append(TASK_VECTOR_FILE)
    return (list(include) if include else None), ignore


def upload_files(folder: Path, allow: list[str] | None = None, ignore: list[str] | None = None) -> list[tuple[str, int]]:
    """(path in repo, size in bytes) of every file `HfApi.upload_folder` would send, sorted."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    kept = filter_repo_objects(files, allow_patterns=allow, ignore_patterns=DEFAULT_IGNORE_PATTERNS if ignore is None else ignore)
    return [(name, files[name]) for name in sorted(kept)]


@contextlib.contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """A temporary copy of `folder` for the upload: a link to each file, the card a real copy
    (the card functions write there, never into `folder`); named like `folder`, as cards say."""
    with tempfile.TemporaryDirectory(prefix="mergekit-het-push-") as tmp:
        stage = Path(tmp) / folder.resolve().name
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                dst = stage / path.relative_to(folder)
                dst.parent.mkdir(parents=True, exist_ok=True)
                if path.relative_to(folder).as_posix() == CARD_FILE:
                    shutil.copyfile(path, dst)
                else:
                    dst.symlink_to(path.resolve())
        stage.mkdir(exist_ok=True)
        yield stage


def _keep_card(stage: Path, folder: Path) -> None:
    """After a successful upload, the model folder gets the card that was uploaded (atomically)."""
    card, local = stage / CARD_FILE, folder / CARD_FILE
    if card.is_file() and not (local.is_file() and local.read_bytes() == card.read_bytes()):
        tmp = folder / f".{CARD_FILE}.tmp"
        shutil.copyfile(card, tmp)
        os.replace(tmp, local)


def prepare_card(stage: Path) -> str | None:
    """Give the staged folder an up-to-date card; returns what was done.

    An expert without README.md gets one from expert.json; a mergekit-het card gets the results
    of `eval_results.json` when they differ from what it shows."""
    card, expert = stage / CARD_FILE, stage / EXPERT_FILE
    if not card.is_file():
        if not expert.is_file():
            return None
        write_expert_card(stage, read_json_object(expert))
        return f"{CARD_FILE}: generated from {EXPERT_FILE}"
    results = load_eval_results(stage)
    if results is not None and refresh_eval_results(stage, results, write=True):
        return f"{CARD_FILE}: evaluation results updated from eval_results.json"
    return None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def _hub_errors(repo_id: str, endpoint: str, user: str | None, hint: str) -> Iterator[None]:
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
            msg = f"push to {repo_id} failed: HTTP {code} from {endpoint} ({said}); {hint}"
        raise MergekitHetError(msg) from None
    except httpx2.TransportError as exc:
        raise MergekitHetError(
            f"network failure while pushing to {repo_id} at {endpoint} ({type(exc).__name__}: {_one_line(exc)}); "
            f"{hint}"
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
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    task_vector: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload `folder` to the Hub model repository `repo_id` (`name` alone means the token's user).

    Returns the commit URL (the pull-request URL with `create_pr`), or with `dry_run` the listing
    of what would be uploaded (nothing is contacted or written). `folder` is written only after a
    successful upload, and then only its card (README.md), as it was uploaded."""
    folder = Path(folder)
    check_model_folder(folder)
    if create_pr and revision:
        raise MergekitHetError(
            f"--create-pr opens a pull request against the default branch, got --revision {revision!r}; "
            "drop one of them (to resume an interrupted PR upload, pass --revision refs/pr/N alone)"
        )
    allow, ignore = upload_patterns(folder, include, exclude, task_vector)
    target = "new pull request" if create_pr else f"branch {revision or 'main'}"
    token = token or (None if dry_run else get_token())
    if not (token or dry_run):
        raise MergekitHetError(
            f"no Hugging Face token found to push to {repo_id}: set HF_TOKEN or run `hf auth login`"
        )
    with staged(folder) as stage:
        card_note = prepare_card(stage)
        files = upload_files(stage, allow, ignore)
        if dry_run:
            return _listing(folder, repo_id, target, files, card_note)
        if not files:
            raise MergekitHetError(f"{folder}: no file left to upload by --include {include} / --exclude {exclude}")
        if card_note:
            print(card_note)
        options = [*(["--private"] if private else []), *(["--revision", revision] if revision else ["--revision", "refs/pr/N"] if create_pr else []),
                   *(["--commit-message", commit_message] if commit_message else []),
                   *[arg for p in include or [] for arg in ("--include", p)],
                   *[arg for p in exclude or [] for arg in ("--exclude", p)], *(["--task-vector"] if task_vector else [])]
        url = _upload(stage, repo_id, token, endpoint, private=private, revision=revision, create_pr=create_pr,
                      commit_message=commit_message or f"Upload {folder.resolve().name} with mergekit-het",
                      allow=allow, ignore=ignore, hint=resume_hint(folder, repo_id, options), card=folder / CARD_FILE)
        _keep_card(stage, folder)
    return url


def _upload(stage: Path, repo_id: str, token: str, endpoint: str | None, *, private: bool, revision: str | None,
            create_pr: bool, commit_message: str, allow: list[str] | None, ignore: list[str], hint: str,
            card: Path) -> str:
    """Create the repository (and branch) if missing and upload the staged folder; the commit or PR URL."""
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(repo_id, endpoint, None, hint):
        user = api.whoami()["name"]
    if "/" not in repo_id:
        repo_id = f"{user}/{repo_id}"
    with _hub_errors(repo_id, endpoint, user, hint):
        # Asked first: on a 403 for an existing repo, create_repo(exist_ok=True) builds a RepoUrl that
        # only parses for the default endpoint, which breaks HF_ENDPOINT / endpoint= setups.
        if not api.repo_exists(repo_id):
            api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and not revision.startswith("refs/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        try:
            info = api.upload_folder(repo_id=repo_id, folder_path=stage, commit_message=commit_message,
                                     revision=revision, create_pr=create_pr, allow_patterns=allow, ignore_patterns=ignore)
        except ValueError as exc:  # the Hub's verdict on README.md metadata
            if "README.md" not in str(exc):
                raise
            raise MergekitHetError(f"{card}: {_one_line(exc)}") from None
    return info.pr_url or info.commit_url
