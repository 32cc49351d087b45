"""The runtime services that act on the domain through the storage contracts.

``dispatch`` runs commands against aggregates (``CommandDispatcher``); ``sagas`` runs a process
manager's reaction to one event (``ProcessBindings``, ``react_to``). They sit beside the worker
(``tideflow.worker``: the long-running loops) in the runtime layer: they import the domain and
the storage contracts, never a backend; an ``App`` wires them to the stores it opens.
"""
