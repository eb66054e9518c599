"""End every session of one user, now, on every process (audited); they sign in again to go on.

Name the user by e-mail address, or by subject (the provider's "sub" claim) and issuer.
An address that belongs to several users (the same person at two providers, or one mailbox
shared by several accounts) is refused, listing each user's --subject and --issuer, so that
you can name exactly one: this command never guesses.

Examples:
  myapp-end-sessions production.ini --email alice@example.com
  myapp-end-sessions production.ini --subject 248289761001
  myapp-end-sessions production.ini --subject 248289761001 --issuer https://login.example.com/realms/main
"""

import shlex

from sqlalchemy import func, select

from myapp.models import User
from myapp.scripts import app_environment, fail, parser
from myapp.services.audit import AuditEventType
from myapp.services.sessions import EndReason

PROG = "myapp-end-sessions"
LISTED = 10


def main(argv=None):
    arguments = parser(PROG, __doc__)
    who = arguments.add_mutually_exclusive_group(required=True)
    who.add_argument("--email", metavar="ADDRESS", help="the user's e-mail address (any letter case)")
    who.add_argument("--subject", metavar="SUB", help="the user's subject (the provider's sub claim)")
    arguments.add_argument(
        "--issuer",
        metavar="URL",
        help="the provider's issuer; with --subject it defaults to the issuer of the first provider of the ini, "
        "with --email it narrows the search to that provider",
    )
    arguments.add_argument(
        "--provider", metavar="NAME", help="the provider by its name in myapp.providers (instead of --issuer)"
    )
    options = arguments.parse_args(argv)
    if options.provider and options.issuer:
        fail(PROG, "give --provider or --issuer, not both")
    with app_environment(PROG, options.config_uri) as env:
        request = env["request"]
        providers = request.services.providers
        if options.provider:
            if options.provider not in providers:
                fail(PROG, f"no provider named {options.provider!r} (the ini lists: {', '.join(providers)})")
            options.issuer = providers[options.provider].settings.issuer
        if options.email is not None:
            user = user_by_email(request.dbsession, options.email, options.issuer)
            described = f"{options.email}: subject {user.subject} ({user.issuer})"
        else:
            issuer = options.issuer or providers.first.settings.issuer
            user = request.dbsession.scalars(
                select(User).where(User.issuer == issuer, User.subject == options.subject)
            ).one_or_none()
            if user is None:
                fail(PROG, f"no user with subject {options.subject!r} from issuer {issuer!r}")
            described = f"{user.subject} ({user.issuer})"
        ended = request.session_store.end_all_for_user(user.id, EndReason.REVOKED_BY_ADMIN)
        request.audit.record(
            AuditEventType.USER_SESSIONS_ENDED_BY_ADMIN,
            user_id=user.id,
            detail=f"{ended} session(s) ended by {PROG}",
        )
    print(f"ended {ended} session(s) of {described}")
    return 0


def user_by_email(dbsession, email: str, issuer: str | None) -> User:
    query = select(User).where(func.lower(User.email) == email.strip().lower()).order_by(User.issuer, User.subject)
    if issuer:
        query = query.where(User.issuer == issuer)
    # Sorted here too: the same order whatever the database's collation.
    users = sorted(dbsession.scalars(query.limit(LISTED + 1)), key=lambda u: (u.issuer, u.subject))
    where = f" from issuer {issuer!r}" if issuer else ""
    if not users:
        fail(PROG, f"no user with e-mail {email!r}{where}")
    if len(users) > 1:
        named = ", ".join(f"--subject {shlex.quote(u.subject)} --issuer {shlex.quote(u.issuer)}" for u in users[:LISTED])
        more = " and more" if len(users) > LISTED else ""
        fail(PROG, f"several users have the e-mail {email!r}{where}; name one with --subject and --issuer: {named}{more}")
    return users[0]
