"""The Ray Serve backend (``--backend ray``): the page and the A1111 API in this process (the ingress),
the jobs on Ray Serve replicas, one per GPU (or CPU replicas with a thread budget each).

- ``deployment``: the Serve deployment ``Replica``, each one today's worker (its own services, model
  manager, RAM cache and generation queue on one device), and ``build_app`` for a Serve config file;
- ``board``: the job board, a small Ray actor that carries interrupt / skip / cancel to the replica
  running a job;
- ``cluster``: start or join the Ray cluster, deploy (or find) the replicas;
- ``backend``: ``RayBackend``, the ``webui.backend.Backend`` protocol over the replicas;
- ``remote_jobs``: the ingress's copy of each job (its latest snapshot, streamed from its replica).

Nothing here is imported unless the Ray backend is asked for; ``ray`` is the optional ``ray`` extra.
"""
