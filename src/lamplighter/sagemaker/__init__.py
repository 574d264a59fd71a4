"""Everything about SageMaker Studio except stopping the watched app, one concern per module.

Where to look:

- *Where does watch stop a SageMaker app?* Not here: in :mod:`lamplighter.platforms.sagemaker`
  (``SageMakerStopper``: ``DeleteApp``, then ``DescribeApp`` until it is gone). The app is probed through
  its Jupyter API like any other Jupyter server.
- *Where is on-start?* :mod:`lamplighter.sagemaker.onstart` (wait for a new app, run a script in it,
  journal the result), triggered by ``lamplighter on-start`` or by the Lambda function in
  :mod:`lamplighter.sagemaker.aws_lambda`.

The modules:

- :mod:`~lamplighter.sagemaker.identity`: which app this is (``AppIdentity`` from the resource-metadata
  file, ``StudioApp`` from the API) and its Jupyter base path.
- :mod:`~lamplighter.sagemaker.client`: the boto3 client, ``call`` with retry and error translation,
  ``describe_app``, ``list_apps``, ``wait_until_in_service``.
- :mod:`~lamplighter.sagemaker.log_guards`: keeps presigned URLs and login cookies out of debug logs.
- :mod:`~lamplighter.sagemaker.login`: logging in to an app from outside with a presigned URL.
- :mod:`~lamplighter.sagemaker.lcc`: the lifecycle configuration script that starts ``watch`` in every
  app (``templates/lcc-on-start.sh``), and installing it on a domain (``lamplighter lcc``).
- :mod:`~lamplighter.sagemaker.onstart`: running a setup script in an app that just started.
- :mod:`~lamplighter.sagemaker.aws_lambda`: the Lambda handler for CloudTrail ``CreateApp`` events
  (deployed as ``lamplighter.aws_lambda.handler``).
- :mod:`~lamplighter.sagemaker.fleet`: ``lamplighter fleet status``, every app of a domain and whether its
  agent runs (Jupyter apps through their contents API, Code Editor apps through their CloudWatch log).
- :mod:`~lamplighter.sagemaker.fleet_check`: the scheduled fleet check, every domain, user profile, space
  and notebook instance; :mod:`~lamplighter.sagemaker.fleet_lambda` its Lambda handler (SNS summary).
- :mod:`~lamplighter.sagemaker.native_guard`: ``watch --native-guard``, SageMaker's native idle shutdown
  made safe for running work.
- :mod:`~lamplighter.sagemaker.notebook_instance`: notebook instances (not Studio): which one this is,
  DescribeNotebookInstance, and their lifecycle configuration (``lcc install --notebook-instance``); the
  stopper is in :mod:`lamplighter.platforms.notebook_instance`.

boto3 (the ``lamplighter[sagemaker]`` extra) is imported only when a client is made. Importing this
package loads only the light modules re-exported below; the others are imported by name.
"""

from __future__ import annotations

from lamplighter.sagemaker.client import RetryPolicy, call, sagemaker_client
from lamplighter.sagemaker.identity import JUPYTER_APP_TYPES, AppIdentity, StudioApp, jupyter_base_url
from lamplighter.sagemaker.login import presigned_connection

__all__ = [
    "JUPYTER_APP_TYPES",
    "AppIdentity",
    "RetryPolicy",
    "StudioApp",
    "call",
    "jupyter_base_url",
    "presigned_connection",
    "sagemaker_client",
]
