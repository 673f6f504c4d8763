"""The operator CLI's failures: one line on stderr, a documented exit status, never a traceback."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from cli_support import reported_breakers, run_cli
from redis_admin import acl_setuser, admin_of, dead_port_url, readme_acl_rule, user_url
from redis_server import RedisServer

from distributed_opossum import cli
from distributed_opossum._redis.keys import BreakerKeys

PASSWORD = "s3cret-pw"


def one_line(err: str) -> str:
    """stderr, checked to be exactly one line from the CLI."""
    assert err.endswith("\n"), repr(err)
    assert err.count("\n") == 1, err
    assert err.startswith("dopossum: "), err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "payments"],
        ["--json", "status"],
        ["watch", "--count", "2"],
        ["force-open", "payments"],
        ["reset", "payments"],
        ["cleanup"],
    ],
)
async def test_no_server_is_exit_3(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """With nothing listening on the port, every command says so in one line and exits 3."""
    url = dead_port_url()
    ran = await run_cli(capsys, "--url", url, *argv)
    assert (ran.code, ran.out) == (cli.EXIT_UNREACHABLE, "")
    assert one_line(ran.err).startswith(f"dopossum: cannot reach Redis at {url}: ")
    assert "refused" in ran.err.lower() or "failed" in ran.err.lower()


async def test_a_wrong_or_missing_password_is_exit_4_and_never_printed(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A password-protected Redis: no password or a wrong one exit 4; the password is not echoed."""
    async with admin_of(redis_server) as admin:
        await admin.config_set("requirepass", PASSWORD)
    none = await run_cli(capsys, "--url", redis_server.url, "status")
    assert none.code == cli.EXIT_REFUSED
    assert "requires a password" in one_line(none.err)
    wrong = await run_cli(capsys, "--url", user_url(redis_server.url, "", "wrong-pw"), "status")
    assert wrong.code == cli.EXIT_REFUSED
    assert "refused the login" in one_line(wrong.err)
    assert "wrong-pw" not in wrong.err
    assert ":***@" in wrong.err
    right = await run_cli(capsys, "--url", user_url(redis_server.url, "", PASSWORD), "status")
    assert (right.code, right.err) == (0, "")


async def test_a_user_without_rights_is_exit_4(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ACL user without the commands it needs: NOPERM, in one line, exit 4, with a hint."""
    async with admin_of(redis_server) as admin:
        await acl_setuser(admin, "nobody", "on", ">pw", "~*", "-@all", "+ping")
    url = user_url(redis_server.url, "nobody", "pw")
    for argv in (["status"], ["force-open", "payments", "--create"]):
        ran = await run_cli(capsys, "--url", url, *argv)
        assert ran.code == cli.EXIT_REFUSED, argv
        assert "no permissions" in one_line(ran.err)
        assert "ACL rights" in ran.err


async def test_readme_viewer_acl_line_reads_and_cannot_steer(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's read-only user runs status and watch; its force-open is refused, exit 4."""
    keys = BreakerKeys.for_breaker("dopossum", "payments")
    async with admin_of(redis_server) as admin:
        await acl_setuser(admin, *readme_acl_rule("dopossum", "dopossum-viewer"))
        async with reported_breakers(redis_server.url, {"payments": (0, 4)}):
            url = user_url(redis_server.url, "dopossum-viewer", "secret")
            for argv in (["status"], ["status", "payments"], ["watch", "--count", "1"]):
                ran = await run_cli(capsys, "--url", url, *argv)
                assert (ran.code, ran.err) == (0, ""), argv
            epoch = await admin.hget(keys.state, "epoch")
            refused = await run_cli(capsys, "--url", url, "force-open", "payments")
            assert refused.code == cli.EXIT_REFUSED
            assert "ACL rights" in one_line(refused.err)
            assert await admin.hget(keys.state, "state") == b"open"
            assert await admin.hget(keys.state, "epoch") == epoch


async def test_readme_operator_acl_line_runs_every_command(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's operator user runs status, force-open, reset and cleanup."""
    async with admin_of(redis_server) as admin:
        await acl_setuser(admin, *readme_acl_rule("dopossum", "dopossum-operator"))
        async with reported_breakers(redis_server.url, {"payments": (0, 4)}):
            url = user_url(redis_server.url, "dopossum-operator", "secret")
            for argv in (
                ["status"],
                ["force-open", "payments"],
                ["reset", "payments"],
                ["cleanup", "--max-age", "0"],
                ["watch", "payments", "--count", "1"],
            ):
                ran = await run_cli(capsys, "--url", url, *argv)
                assert (ran.code, ran.err) == (0, ""), argv


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ([], "required: COMMAND"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["reset"], "required: name"),
        (["status", "a", "b"], "unrecognized arguments: b"),
        (["--url", "http://example.com", "status"], "scheme"),
        (["--url", "redis://host:notaport", "status"], "Port"),
        (["--prefix", "a{b", "status"], "prefix must not contain"),
        (["status", ""], "name must not be empty"),
        (["cleanup", "--max-age", "-1"], "--max-age must be >= 0"),
        (["cleanup", "--max-age", "soon"], "invalid float value: 'soon'"),
        (["watch", "--interval", "0"], "--interval: invalid positive float value: '0'"),
        (["watch", "--count", "0"], "--count: invalid positive int value: '0'"),
    ],
)
def test_bad_arguments_are_exit_2(
    capsys: pytest.CaptureFixture[str], argv: Sequence[str], words: str
) -> None:
    """Bad arguments: one line naming the problem, exit 2, before anything connects."""
    assert cli.main([*argv]) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert words in one_line(err)


def test_help_lists_the_commands_and_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    """--help exits 0 and names every command and the exit statuses."""
    assert cli.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal
    for command in ("status", "watch", "force-open", "reset", "cleanup", "demo"):
        assert command in out
    assert "exit status: 0 ok, 1 no such breaker, 2 bad arguments, 3 cannot reach Redis" in out


def test_demo_gets_the_rest_of_the_arguments(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """demo hands every later argument to distributed_opossum.demo.main and returns its status."""
    from distributed_opossum import demo  # noqa: PLC0415

    received: list[list[str] | None] = []

    def fake_main(argv: Sequence[str] | None = None) -> int:
        received.append(None if argv is None else list(argv))
        if argv and argv[0] == "--bad":
            raise SystemExit(2)  # what the demo's argparse does
        return 7

    monkeypatch.setattr(demo, "main", fake_main)
    assert cli.main(["demo", "--pods", "3", "--status"]) == 7
    assert cli.main(["--url", "redis://x", "--json", "demo", "--help"]) == 7
    assert cli.main(["demo"]) == 7
    assert cli.main(["demo", "--bad"]) == 2
    assert received == [["--pods", "3", "--status"], ["--help"], [], ["--bad"]]
