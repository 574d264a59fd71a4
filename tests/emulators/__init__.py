"""Local stand-ins for cloud services that cannot run in the tests (SageMaker's Studio API)."""
