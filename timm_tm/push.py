"""``timm-tm push``: upload a folder made by ``timm-tm export`` (:mod:`timm_tm.export`) to the Hugging Face Hub.

::

    timm-tm push tm_resnet50.my_data --repo ORG/tm_resnet50.my_data [--dry-run]

Only the files an export writes (``EXPORT_FILES``) are uploaded, after the checks that keep a broken folder off the
Hub (missing files, symbolic or hard links to files outside the folder, weights that fail their SHA-256). The token
comes from the standard Hugging Face environment (``HF_TOKEN``, ``hf auth login``) and never appears in a message.
"""

from pathlib import Path
from typing import List, Optional, Tuple

from huggingface_hub import CommitInfo, HfApi, constants, get_token
from huggingface_hub.utils import HfHubHTTPError

from timm_tm import __version__
from timm_tm.cli import command_parser, report_error
from timm_tm.export import EXPORT_FILES
from timm_tm.files import PathLike
from timm_tm.pretrained import WEIGHTS_NAME, WeightsFileError, repo_id_problem, verify_weights_file

__all__ = ['PushError', 'push', 'main']

DEFAULT_COMMIT_MESSAGE = 'Add tm_* model (timm-tm push)'


class PushError(RuntimeError):
    """An upload that cannot be done or was refused; a one-line message (never contains the token)."""


def _argument_problem(repo_id: str, revision: Optional[str]) -> Optional[str]:
    """What is wrong with the repo id or revision themselves, in one line; None when nothing is."""
    problem = repo_id_problem(repo_id)
    if problem:
        return f'--repo {repo_id!r}: not a valid Hugging Face Hub repo id: {problem}'
    if revision is not None and (not revision.strip() or not revision.isprintable()):
        return f'--revision {revision!r}: not a branch name'
    return None


def _folder_files(folder: Path) -> Tuple[List[str], List[str]]:
    """(files ``push`` uploads, other entries it leaves out), after the checks that keep a bad folder off the Hub.

    Only ``EXPORT_FILES`` are uploaded; each must be a regular file inside ``folder`` (a link that leads out of it,
    e.g. to a system file, is refused: the upload would send what it points to).
    """
    if not folder.is_dir():
        raise PushError(f'{folder}: not a folder (make one with `timm-tm export`)')
    root = folder.resolve()
    missing = [n for n in EXPORT_FILES if not (folder / n).is_file()]
    if missing:
        raise PushError(f'{folder}: missing {", ".join(missing)} (make the folder with `timm-tm export`)')
    for n in EXPORT_FILES:
        real = (folder / n).resolve()
        if root not in real.parents:
            raise PushError(f'{folder / n}: a link to {real}, outside {folder}; push uploads only files in the folder')
        _check_no_outside_hard_link(folder, n)
    try:
        verify_weights_file(folder / WEIGHTS_NAME)
    except WeightsFileError as e:
        raise PushError(str(e)) from e
    others = sorted(p.name for p in folder.iterdir() if p.name not in EXPORT_FILES and p.name != '.git')
    return list(EXPORT_FILES), others


def _check_no_outside_hard_link(folder: Path, name: str) -> None:
    """Refuse ``folder / name`` when it is a hard link to a file that also has names outside ``folder``: such a file
    is not the export's own (``export`` writes new files), and may be any file of the user's."""
    st = (folder / name).stat()
    inside = sum(1 for p in folder.iterdir() if _same_inode(p, st))
    if st.st_nlink > inside:
        raise PushError(
            f'{folder / name}: a hard link to a file that has {st.st_nlink - inside} more name(s) outside {folder}; '
            'push uploads only the files an export wrote (copy it, or export again)'
        )


def _same_inode(path: Path, st) -> bool:
    try:
        other = path.stat()
    except OSError:
        return False
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


def _one_line(e: BaseException, token: Optional[str]) -> str:
    text = ' '.join(str(e).split()) or type(e).__name__
    if token:
        text = text.replace(token, '***')
    return text


def _print_plan(folder: Path, repo_id: str, files: List[str], others: List[str]) -> None:
    """Say what is left out of the upload, and warn when the card's snippets load another repo."""
    if others:
        shown = ', '.join(others[:8]) + (f' and {len(others) - 8} more' if len(others) > 8 else '')
        print(
            f'timm-tm push: not uploading {shown}: push uploads only what `timm-tm export` writes ({", ".join(files)})'
        )
    readme = (folder / 'README.md').read_text(encoding='utf-8', errors='replace')
    if 'hf-hub:' in readme and f'hf-hub:{repo_id}' not in readme:
        print(f'timm-tm push: warning: README.md snippets load another repo than {repo_id} (export --repo)')


def _upload(
    folder: Path, repo_id: str, private: bool, revision: Optional[str], commit_message: str, where: str
) -> CommitInfo:
    """Create the repo (and branch) if missing and commit the export's files (``where`` names the destination in
    messages)."""
    if constants.HF_HUB_OFFLINE:
        raise PushError('HF_HUB_OFFLINE is set: uploading needs the network (unset it, or use --dry-run)')
    token = get_token()
    if not token:
        raise PushError('no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)')
    api = HfApi(token=token, library_name='timm-tm', library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=revision,
            allow_patterns=list(EXPORT_FILES),  # exact names, no wildcards: nothing else can be sent
            commit_message=commit_message,
        )
    except Exception as e:
        response = getattr(e, 'response', None)
        if isinstance(e, HfHubHTTPError) and response is not None:
            raise PushError(
                f'the Hub refused the upload to {where}: HTTP {response.status_code}: {_one_line(e, token)}'
            ) from None
        raise PushError(f'cannot upload to {where}: {type(e).__name__}: {_one_line(e, token)}') from None


def push(
    folder: PathLike,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    revision: Optional[str] = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
) -> List[Tuple[str, int]]:
    """Upload ``folder`` to the Hub repo ``repo_id`` (created if missing); returns the (file, bytes) uploaded.

    ``dry_run`` prints what would be uploaded and where, without touching the network. The token comes from the
    standard Hugging Face environment (``HF_TOKEN``, ``hf auth login``) and is never printed.
    """
    folder = Path(folder)
    problem = _argument_problem(repo_id, revision)
    if problem:
        raise PushError(problem)
    files, others = _folder_files(folder)
    sizes = [(n, (folder / n).stat().st_size) for n in files]
    _print_plan(folder, repo_id, files, others)
    where = f'{constants.ENDPOINT}/{repo_id} (revision {revision or "main"}, {"private" if private else "public"})'
    if dry_run:
        total = sum(s for _, s in sizes)
        print(f'dry run: would upload {len(sizes)} files ({total:,} bytes) to {where}; nothing was sent')
        width = max(len(n) for n, _ in sizes)
        for n, s in sizes:
            print(f'  {n:<{width}}  {s:>14,} bytes')
        return sizes
    info = _upload(folder, repo_id, private, revision, commit_message, where)
    print(f'uploaded {len(sizes)} files to {where}: {getattr(info, "commit_url", info)}')
    return sizes


def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser(
        'push',
        'Upload a folder made by `timm-tm export` to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`).',
    )
    parser.add_argument('folder', help='the exported folder (model.safetensors, config.json, README.md)')
    parser.add_argument('--repo', required=True, help='Hub repo ORG/NAME (created if missing)')
    parser.add_argument('--private', action='store_true', help='create the repo private')
    parser.add_argument('--revision', help='branch to upload to (created if missing; default: main)')
    parser.add_argument('--commit-message', default=DEFAULT_COMMIT_MESSAGE)
    parser.add_argument('--dry-run', action='store_true', help='list the files, sizes and destination; no network')
    ns = parser.parse_args(argv)
    problem = _argument_problem(ns.repo, ns.revision)
    if problem:
        parser.error(problem)
    try:
        push(ns.folder, ns.repo, ns.private, ns.dry_run, ns.revision, ns.commit_message)
    except PushError as e:
        return report_error('push', e)
    return 0
