"""The model repository (repository.py) and its parts, one job each."""

from app.repository.errors import LoadFailed, RepositoryUnreadable
from app.repository.names import check_name, check_no_repository, parse_version, repository_named
from app.repository.repository import ModelRepository, load_config, load_override, unload_dependents
from app.repository.states import State

__all__ = ["LoadFailed", "ModelRepository", "RepositoryUnreadable", "State", "check_name", "check_no_repository", "load_config", "load_override", "parse_version", "unload_dependents",
           "repository_named"]
