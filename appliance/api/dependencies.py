"""Dependency providers: controllers receive use cases, never build them."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import Provide

from appliance.catalog.repository import Catalog
from appliance.components import Components
from appliance.identification.identify import Identifier
from appliance.intake.deliveries import Intake
from appliance.submissions import SubmissionRepository


def components(state: State) -> Components:
    comps: Components = state.components
    return comps


def identifier(state: State) -> Identifier:
    return components(state).identifier


def intake(state: State) -> Intake:
    return components(state).intake


def catalog(state: State) -> Catalog:
    return components(state).catalog


def submissions(state: State) -> SubmissionRepository:
    return components(state).submissions


def base_url(state: State) -> str:
    return (components(state).settings.server.public_base_url or "").rstrip("/")


DEPENDENCIES = {
    "components": Provide(components, sync_to_thread=False),
    "identifier": Provide(identifier, sync_to_thread=False),
    "intake": Provide(intake, sync_to_thread=False),
    "catalog": Provide(catalog, sync_to_thread=False),
    "submissions": Provide(submissions, sync_to_thread=False),
    "base_url": Provide(base_url, sync_to_thread=False),
}
