"""The pieces of ``python -m distributed_opossum demo`` (entry point: ``distributed_opossum.demo``).

One module per job: ``settings`` (the numbers of the scenario), ``redis_target``
(which Redis), ``downstream`` (the payments API), ``pod`` (one pod process),
``fleet`` (starting and stopping the pods), ``records`` (what pods report),
``words`` and ``timeline`` (the live output), ``scenario`` (the phases),
``summary`` and ``picture`` (the report at the end).
"""
