"""End sessions whose time ran out (revoking their tokens), then delete what has expired: sessions,
sign-ins never completed, logout-token replay records, and audit records older than
myapp.audit.retention (400 days unless the ini says otherwise).

Run it hourly, from cron or a systemd timer.

Example:
  myapp-purge production.ini --keep 1d
"""

from sqlalchemy import delete

from myapp.models import LoginTransaction, SeenLogoutToken
from myapp.models.meta import utcnow
from myapp.scripts import app_environment, fail, parser
from myapp.settings import parse_duration

PROG = "myapp-purge"


def main(argv=None):
    arguments = parser(PROG, __doc__)
    arguments.add_argument(
        "--keep",
        default="1d",
        help="keep ended or expired sessions this long, so that their browsers can be told why they "
        "were signed out (default 1d; seconds, or 30s, 15m, 8h, 14d)",
    )
    options = arguments.parse_args(argv)
    try:
        keep = parse_duration(options.keep)
    except ValueError as e:
        fail(PROG, f"--keep: {e}")
    with app_environment(PROG, options.config_uri) as env:
        request = env["request"]
        # Sessions whose time ran out end first (their tokens queued for revocation), as the
        # servers' revokers do every minute, in case none runs.
        request.services.revoker.end_expired_sessions()
        now = utcnow()
        sessions = request.session_store.purge_expired(retention=keep)
        logins = request.dbsession.execute(delete(LoginTransaction).where(LoginTransaction.expires_at < now)).rowcount
        replays = request.dbsession.execute(delete(SeenLogoutToken).where(SeenLogoutToken.expires_at < now)).rowcount
        audited = request.audit.purge(now - request.services.settings.audit.retention)
    print(
        f"purged {sessions} session(s), {logins} unfinished sign-in(s), {replays} logout-token record(s), "
        f"{audited} audit record(s)"
    )
    return 0
