"""The ``tideflow`` command line: workers, runs, flows, migrations and the demo.

``main`` holds the commands; ``render`` and ``dag`` draw; ``loading`` finds the user's flows and
database; ``live`` and ``demo`` watch runs progress; ``demo_flows`` are the demo's flows.
"""
