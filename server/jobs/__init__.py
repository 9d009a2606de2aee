"""Intake jobs: each upload checked, compressed and converted in its own process, then sealed.

The gateway side (``supervisor``, ``process``) never imports TensorFlow; the
job process (``python -m server.jobs.worker JOB_DIR``) does, and holds no key,
no database connection and no secret: it reads the job's private staging
directory and writes its result there, and the supervisor seals it.
"""
