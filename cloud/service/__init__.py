"""The edgeloop service: model registry, signed releases, sample ingestion and a dashboard.

``create_app`` builds the FastAPI app; ``edgeloop cloud serve`` runs it under uvicorn.
"""
