"""Operator commands (console scripts). Each takes an ini file, answers --help, and reports a bad
ini or setting in one line with exit status 2."""

import argparse
import configparser
import os
import sys
from contextlib import contextmanager

import plaster
from pyramid.paster import bootstrap, get_appsettings, setup_logging

from myapp import SCRIPT_OPTION
from myapp.services import Services
from myapp.settings import SettingsError, load_settings


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a mistake on the command line reported in one line like every other error."""

    def error(self, message):
        fail(self.prog, f"{message} (see --help)")


def parser(prog: str, description: str, *, ini: bool = True) -> argparse.ArgumentParser:
    """A parser whose --help prints the script's docstring as written: paragraphs and examples."""
    result = ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if ini:
        result.add_argument("config_uri", metavar="INI", help="the app's ini file, e.g. production.ini")
    return result


def fail(prog: str, *messages: str) -> None:
    for message in messages:
        print(f"{prog}: {message}", file=sys.stderr)
    raise SystemExit(2)


def print_lines(lines) -> int:
    """Print each line; exit status 0, or 1 when the reader stopped early.

    A reader that stops early (``| head``) ends the output quietly, as it would any Unix tool's,
    not with a ``BrokenPipeError`` traceback. Python flushes stdout once more at exit, which
    would raise again, so stdout is pointed at the null device first."""
    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def read_ini(prog: str, config_uri: str) -> dict:
    """The raw ``[app:main]`` settings of an ini file; a missing or broken file is one line."""
    try:
        return get_appsettings(config_uri, name="main")
    except (FileNotFoundError, OSError) as e:
        fail(prog, f"cannot read {config_uri}: {e.strerror or e}")
    except configparser.InterpolationError as e:
        fail(prog, _where_a_percent_is(config_uri, e))
    except (plaster.InvalidURI, plaster.LoaderNotFound):
        fail(prog, f"cannot read {config_uri}: give the path of an ini file (such as production.ini)")
    except Exception as e:  # plaster and configparser raise many kinds of errors for a broken ini
        fail(prog, f"cannot read {config_uri}: {type(e).__name__}: {str(e).splitlines()[0]}")


def _where_a_percent_is(config_uri: str, error: configparser.InterpolationError) -> str:
    """configparser's words repeat the value, or its tail: a password written %40 in a URL, or a
    secret holding a % (helper-147, helper-148: a logging handler's too). Where it is, never what."""
    return (
        f"cannot read {config_uri}: the value of {error.option} in [{error.section}] holds a % that is not "
        "written %% (the value is not repeated here: it may be a secret)"
    )


def configure_logging(prog: str, config_uri: str) -> None:
    """Logging as the ini's [loggers] section says; a broken one is one line, not a traceback."""
    try:
        setup_logging(config_uri)
    except configparser.InterpolationError as e:
        fail(prog, _where_a_percent_is(config_uri, e))
    except Exception as e:  # logging.config raises many kinds of errors for broken sections
        first_line = (str(e).splitlines() or [""])[0]
        fail(prog, f"cannot set up logging from {config_uri}: {type(e).__name__}: {first_line}")


def read_settings(prog: str, config_uri: str):
    """The typed settings of an ini file, without starting the app (no database needed)."""
    raw = read_ini(prog, config_uri)
    try:
        return raw, load_settings(raw)
    except SettingsError as e:
        fail(prog, *e.problems)


@contextmanager
def app_environment(prog: str, config_uri: str):
    """The running app's request and registry, inside a transaction that commits on success.

    Once committed, the tokens of the sessions it ended are revoked at once (what the provider
    does not answer now, the servers' revokers try again later)."""
    read_settings(prog, config_uri)  # a clear one-line error before anything starts
    configure_logging(prog, config_uri)
    try:
        env = bootstrap(config_uri, options={SCRIPT_OPTION: prog})
    except SystemExit as e:  # main() reports settings and schema problems this way
        fail(prog, *(line.removeprefix("myapp: ") for line in str(e.code).splitlines()))
    services = env["registry"][Services]
    try:
        with env["request"].tm:
            yield env
        services.revoker.revoke_due()
    finally:
        env["closer"]()
        services.close()
