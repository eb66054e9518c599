"""End every session of one user, named by the provider's issuer and subject (``sub``)."""

from sqlalchemy import select

from myapp.models import User
from myapp.scripts import app_environment, fail, parser
from myapp.services.audit import AuditEventType
from myapp.services.sessions import EndReason

PROG = "myapp-end-sessions"


def main(argv=None):
    arguments = parser(PROG, __doc__)
    arguments.add_argument("--subject", required=True, help="the user's subject (the sub claim)")
    arguments.add_argument("--issuer", help="the provider's issuer (default: myapp.oidc.issuer of the ini)")
    options = arguments.parse_args(argv)
    with app_environment(PROG, options.config_uri) as env:
        request = env["request"]
        issuer = options.issuer or request.services.settings.oidc.issuer
        user = request.dbsession.scalars(
            select(User).where(User.issuer == issuer, User.subject == options.subject)
        ).one_or_none()
        if user is None:
            fail(PROG, f"no user with subject {options.subject!r} from issuer {issuer!r}")
        ended = request.session_store.end_all_for_user(user.id, EndReason.REVOKED_BY_ADMIN)
        request.audit.record(
            AuditEventType.USER_SESSIONS_ENDED_BY_ADMIN,
            user_id=user.id,
            detail=f"{ended} session(s) ended by {PROG}",
        )
    print(f"ended {ended} session(s) of {options.subject} ({issuer})")
    return 0
