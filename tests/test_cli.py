"""timm_tm.cli: the one entry point, and the conventions every subcommand shares (prog name, error line, status)."""

import argparse

import pytest

from timm_tm import __version__
from timm_tm.cli import COMMANDS, command_parser, first_line, int_list, main, report_error


def test_usage_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(f'  {name} ' in out for name in COMMANDS)
    assert main(['--version']) == 0
    assert capsys.readouterr().out.strip() == f'timm-tm {__version__}'


def test_unknown_command_is_a_usage_error(capsys):
    assert main(['frobnicate']) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_every_command_answers_help_with_0_and_wrong_arguments_with_2(name, capsys):
    """argparse's exits come back as the command's status, not as SystemExit through main()."""
    assert main([name, '--help']) == 0
    assert 'usage: timm-tm' in capsys.readouterr().out
    if name == 'run':  # its arguments are the script's own
        return
    assert main([name, '--no-such-flag']) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'usage: timm-tm {name}') and f'timm-tm {name}: error:' in err


def test_command_parser_and_report_error(capsys):
    parser = command_parser('demo', 'a demo')
    assert parser.prog == 'timm-tm demo'
    assert report_error('demo', 'the file is gone') == 1
    assert capsys.readouterr().err == 'timm-tm demo: error: the file is gone\n'


def test_int_list():
    assert int_list('2,2, 2,2') == [2, 2, 2, 2]
    assert int_list('') == []
    assert int_list('0,1', minimum=0) == [0, 1]
    with pytest.raises(argparse.ArgumentTypeError, match='comma-separated integers'):
        int_list('2,x')
    with pytest.raises(argparse.ArgumentTypeError, match='>= 1'):
        int_list('2,0')


def test_first_line_of_an_error():
    assert first_line(ValueError('bad value\nTraceback detail')) == 'bad value'
    assert first_line(KeyError()) == 'KeyError'
