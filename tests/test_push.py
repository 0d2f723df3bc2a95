"""``timm-tm push``: an exported folder (``export_fixtures``), checked and uploaded; the Hub is never reached.

A dry run lists what would be sent; a real upload goes to an endpoint on the loopback (nothing listening, or a
local server that refuses it), or is stopped inside huggingface_hub before its commit.
"""

import http.server
import re
import threading

import pytest
from export_fixtures import TAG, export_copy
from offline_hub import corrupt_file

from timm_tm.cli import main as timm_tm_main
from timm_tm.pretrained import tm_hub_id
from timm_tm.push import PushError, push
from timm_tm.push import main as push_main

pytest_plugins = ('export_fixtures',)  # the exported fixture


def test_push_dry_run_lists_files_sizes_and_destination(exported, monkeypatch, capsys):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')  # nothing listens: any request would fail
    repo = tm_hub_id(TAG)
    assert push_main([str(exported), '--repo', repo, '--dry-run', '--revision', 'v1', '--private']) == 0
    out = capsys.readouterr().out
    assert f'http://127.0.0.1:9/{repo} (revision v1, private)' in out and 'nothing was sent' in out
    listed = re.findall(r'^  (\S+)\s+([\d,]+) bytes$', out, flags=re.M)
    assert listed == [(p.name, f'{p.stat().st_size:,}') for p in sorted(exported.iterdir())]


def test_push_refuses_broken_folders_and_bad_repo_ids(exported, tmp_path, capsys):
    folder = export_copy(exported, tmp_path / 'f')
    corrupt_file(folder / 'model.safetensors', 'altered')
    assert push_main([str(folder), '--repo', 'a/b', '--dry-run']) == 1
    assert 'altered or truncated' in capsys.readouterr().err
    (folder / 'README.md').unlink()
    assert push_main([str(folder), '--repo', 'a/b', '--dry-run']) == 1
    assert 'missing README.md' in capsys.readouterr().err
    for repo in ('no-slash', '../evil', 'me/x y', 'me/x"y', 'a/b/c', 'me/-x', 'me/x.git', 'me/x--y', 'me/é'):
        # wrong arguments: argparse's usage and one error line, exit status 2; the API raises the same message
        assert timm_tm_main(['push', str(exported), '--repo', repo, '--dry-run']) == 2, repo
        err = capsys.readouterr().err
        assert err.startswith('usage: timm-tm push ') and 'Traceback' not in err, err
        line = err.rstrip('\n').splitlines()[-1]
        assert line.startswith(f'timm-tm push: error: --repo {repo!r}: not a valid Hugging Face Hub repo id'), err
        with pytest.raises(PushError) as e:
            push(exported, repo, dry_run=True)
        assert line == f'timm-tm push: error: {e.value}'
    assert timm_tm_main(['push', str(exported), '--repo', 'a/b', '--revision', ' ', '--dry-run']) == 2
    assert "timm-tm push: error: --revision ' ': not a branch name" in capsys.readouterr().err


def test_push_uploads_only_what_an_export_writes(exported, tmp_path, capsys):
    """Dotfiles, pickles under any suffix, and links next to the export are never uploaded, and are named."""
    secret = tmp_path / 'secret.txt'
    secret.write_text('not for the Hub')
    folder = export_copy(exported, tmp_path / 'f')
    extras = ['.env', 'id_rsa', 'weights.PT', 'model.joblib', 'w.pth.bak', 'pytorch_model.bin']
    for name in extras:
        (folder / name).write_bytes(b'private')
    (folder / 'link.txt').symlink_to(secret)
    (folder / 'sub').mkdir()
    (folder / 'sub' / 'config.json').write_text('{}')
    assert push_main([str(folder), '--repo', 'a/b', '--dry-run']) == 0
    out = capsys.readouterr().out
    listed = re.findall(r'^  (\S+)\s+[\d,]+ bytes$', out, flags=re.M)
    assert listed == ['README.md', 'config.json', 'model.safetensors']
    (note,) = [line for line in out.splitlines() if 'not uploading' in line]
    assert all(name in note for name in [*extras, 'link.txt', 'sub'])


def test_push_refuses_an_export_file_that_links_out_of_the_folder(exported, tmp_path, capsys):
    outside = tmp_path / 'card.md'
    outside.write_text((exported / 'README.md').read_text())
    folder = export_copy(exported, tmp_path / 'f')
    (folder / 'README.md').unlink()
    (folder / 'README.md').symlink_to(outside)
    assert push_main([str(folder), '--repo', 'a/b', '--dry-run']) == 1
    err = capsys.readouterr().err
    assert 'README.md' in err and str(outside) in err and 'outside' in err
    (folder / 'README.md').unlink()
    (folder / 'README.md').symlink_to('config.json')  # a link inside the folder sends nothing from elsewhere
    assert push_main([str(folder), '--repo', 'a/b', '--dry-run']) == 0


@pytest.mark.parametrize('name', ['README.md', 'config.json'])
def test_push_refuses_an_export_file_that_is_a_hard_link_to_a_file_outside(exported, tmp_path, capsys, name):
    """A hard link is no symbolic link: it resolves inside the folder, yet its content is a file of elsewhere."""
    import os

    outside = tmp_path / 'private.txt'
    outside.write_text((exported / name).read_text())  # e.g. notes kept beside the run
    folder = export_copy(exported, tmp_path / 'f')
    (folder / name).unlink()
    os.link(outside, folder / name)
    assert push_main([str(folder), '--repo', 'a/b', '--dry-run']) == 1
    line = _one_line_error(capsys)
    assert str(folder / name) in line and 'hard link' in line and 'outside' in line
    (folder / name).unlink()
    os.link(folder / 'model.safetensors', folder / 'extra.bin')  # a second name inside the folder sends nothing else
    (folder / name).write_text(outside.read_text())
    assert push_main([str(folder), '--repo', 'a/b', '--dry-run']) == 0


@pytest.fixture
def online(tmp_path, monkeypatch):
    """No token anywhere, online mode, and an endpoint on the loopback (set by each test)."""
    import huggingface_hub.constants as constants

    for var in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_HUB_OFFLINE'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'HF_TOKEN_PATH', str(tmp_path / 'no_token'))
    monkeypatch.setattr(constants, 'HF_STORED_TOKENS_PATH', str(tmp_path / 'no_stored_tokens'))
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')
    return constants


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('timm-tm push: error: '), captured.err
    return lines[0]


def test_push_without_token_or_offline_is_a_one_line_error(exported, online, monkeypatch, capsys):
    assert push_main([str(exported), '--repo', tm_hub_id(TAG)]) == 1
    assert 'no Hugging Face token' in _one_line_error(capsys)
    monkeypatch.setattr(online, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('HF_TOKEN', 'hf_secretsecretsecret')
    assert push_main([str(exported), '--repo', tm_hub_id(TAG)]) == 1
    assert 'HF_HUB_OFFLINE' in _one_line_error(capsys)


def test_push_without_network_is_a_one_line_error(exported, online, monkeypatch, capsys):
    monkeypatch.setenv('HF_TOKEN', 'hf_secretsecretsecret')
    assert push_main([str(exported), '--repo', tm_hub_id(TAG)]) == 1
    line = _one_line_error(capsys)
    assert 'cannot upload to http://127.0.0.1:9/' in line and 'secret' not in line


def test_push_refused_by_the_hub_is_a_one_line_error(exported, online, monkeypatch, capsys):
    class Refuse(http.server.BaseHTTPRequestHandler):
        def _refuse(self):
            body = b'{"error": "Invalid credentials in Authorization header"}'
            self.send_response(401)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_HEAD = _refuse

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(('127.0.0.1', 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(online, 'ENDPOINT', f'http://127.0.0.1:{server.server_port}')
        monkeypatch.setenv('HF_TOKEN', 'hf_secretsecretsecret')
        assert push_main([str(exported), '--repo', tm_hub_id(TAG)]) == 1
    finally:
        server.shutdown()
        server.server_close()
    line = _one_line_error(capsys)
    assert 'the Hub refused' in line and 'HTTP 401' in line and 'secret' not in line


def test_push_passes_the_allow_list_to_the_upload(exported, online, tmp_path, monkeypatch, capsys):
    """What huggingface_hub's upload_folder would commit, from the arguments push gives it: the export's files only
    (the commit itself is stopped before any request)."""
    from huggingface_hub import HfApi

    folder = export_copy(exported, tmp_path / 'f')
    for name in ('.env', 'weights.PT', 'notes.txt'):
        (folder / name).write_text('private')
    (folder / 'link.safetensors').symlink_to(folder / 'model.safetensors')
    committed = []
    prepare = HfApi._prepare_upload_folder_additions

    def record(self, *args, **kwargs):
        ops = prepare(self, *args, **kwargs)
        committed.extend(op.path_in_repo for op in ops)
        raise RuntimeError('stopped before the commit')

    monkeypatch.setattr(HfApi, 'create_repo', lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, '_validate_yaml', lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, '_prepare_upload_folder_additions', record)
    monkeypatch.setenv('HF_TOKEN', 'hf_secretsecretsecret')
    assert push_main([str(folder), '--repo', 'a/b']) == 1
    assert 'stopped before the commit' in capsys.readouterr().err
    assert sorted(committed) == ['README.md', 'config.json', 'model.safetensors']
