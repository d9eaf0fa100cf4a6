"""Shared fakes, servers and victims for the tests and the benchmarks.

One importable package so a benchmark measures with the very code a test asserts with:
pytest puts ``tests/`` on the path (``pythonpath`` in pyproject.toml) and ``bench/_common``
does the same for the benchmark scripts. Modules:

* ``procs``: ports, pid files, the victim's argv, a child's environment (this checkout's src).
* ``victim``: the supervised process (a tiny stdlib HTTP server that can crash or hang).
* ``fast_server``: an always-healthy keep-alive HTTP target (scale and probe benches).
* ``hostile``: misbehaving HTTP endpoints (hang, endless body, slowloris, ...), run as a script.
* ``chaos``: ``guardian run`` as a real process, its config, its log, leftover victims.
* ``attacks``: attacks on Guardian's API and a running Guardian to aim them at.
* ``rawhttp``: a raw asyncio HTTP server that answers exactly the bytes a test gives.
* ``api``: a realistic config and view for the API tests.
* ``incidents``: incident configs, results, recovery events and a real webhook receiver.
"""
