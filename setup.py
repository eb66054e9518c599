from setuptools import find_namespace_packages, setup

# Floors are past every published advisory that affects how myapp uses the package
# (tests/unit/test_dependencies.py lists them); `make audit` checks what is installed.
requires = [
    "pyramid>=2.0.2",
    "pyramid_jinja2>=2.10",
    "Jinja2>=3.1.6",
    # Jinja2's own escaping, imported by the page helpers written in Python (myapp/views/__init__.py).
    "MarkupSafe>=2.0",
    "WebOb>=1.8.8",
    "pyramid_tm>=2.5",
    "pyramid_retry>=2.1.1",
    "waitress>=3.0.1",
    "plaster_pastedeploy>=1.0",
    "transaction>=4.0",
    "zope.sqlalchemy>=3.1",
    "SQLAlchemy>=2.0.30",
    "alembic>=1.13",
    "Authlib>=1.9.0",
    "joserfc>=1.6.7",
    "requests>=2.32.4",
    "urllib3>=2.7.0",
    # The proxy's HTTP/1.1 client parses answers with llhttp through httptools (docs/architecture.md,
    # "Two HTTP clients, on purpose"): about 250 µs of CPU less per proxied call than urllib3.
    "httptools>=0.6.3",
    "idna>=3.7",
    "certifi>=2024.7.4",
    "cryptography>=44.0.1",
    "psycopg[binary]>=3.2",
    "redis>=5.0",
    "prometheus-client>=0.20",
    # myapp.log.format = json: one JSON object a line, with the request id (issue 15).
    "python-json-logger>=3.1",
    # myapp.otel.*: traces (issue 15); off by default, the API's no-op tracer costs a call.
    "opentelemetry-api>=1.27",
    "opentelemetry-sdk>=1.27",
    "opentelemetry-exporter-otlp-proto-http>=1.27",
]

testing_requires = [
    "WebTest>=3.0.1",
    "pytest>=8.0",
    # `make test` runs the suite on every CPU (one process each, a file at a time): it spends most
    # of its time in one Python thread, and CI gives it ten minutes on two CPUs.
    "pytest-xdist>=3.5",
    # tests/functional/test_installed_package.py builds a wheel offline with the venv's setuptools,
    # which before 70.1 needs bdist_wheel from wheel (wheel 0.46 left it to setuptools).
    "wheel>=0.40,<0.46",
]

# End-to-end tests drive Debian's chromium through its chromedriver (tests/e2e, `make e2e`).
e2e_requires = [
    "selenium>=4.20",
]

# `make bench` and `make chaos`: their charts (docs/benchmarks.png, docs/chaos-timeline.png).
bench_requires = [
    "matplotlib>=3.8",
]

# `make audit`: the installed packages against PyPI's advisory database.
audit_requires = [
    "pip-audit>=2.7",
]

setup(
    name="myapp",
    version="0.1.0",
    description="A backend-for-frontend that keeps OpenID Connect tokens on the server",
    python_requires=">=3.11",
    # Namespace packages, so that templates/ and static/ ship as the package data they are.
    # The top-level alembic/ folder ships as myapp/migrations (script_location = myapp:migrations).
    packages=find_namespace_packages(include=["myapp", "myapp.*"], exclude=["*.__pycache__"])
    + ["myapp.migrations", "myapp.migrations.versions"],
    package_dir={"myapp.migrations": "alembic"},
    package_data={"": ["*.jinja2", "*.css", "*.js", "*.svg", "*.png", "*.ico"], "myapp.migrations": ["script.py.mako"]},
    zip_safe=False,
    install_requires=requires,
    extras_require={"testing": testing_requires, "e2e": e2e_requires, "audit": audit_requires, "bench": bench_requires},
    entry_points={
        "paste.app_factory": ["main = myapp:main"],
        # waitress, refusing requests with both Content-Length and Transfer-Encoding (myapp/server.py)
        "paste.server_runner": ["waitress = myapp.server:serve_paste"],
        "console_scripts": [
            "myapp-migrate = myapp.scripts.migrate:main",
            "myapp-purge = myapp.scripts.purge:main",
            "myapp-end-sessions = myapp.scripts.end_sessions:main",
            "myapp-generate-key = myapp.scripts.generate_key:main",
            "myapp-show-config = myapp.scripts.show_config:main",
        ],
    },
)
