"""The form's vocabulary, defined once: the prototype's field names (existing forms keep
working with them) and the shape of Jotform's submission and form ids. No imports: Settings
checks RAIOX_JOTFORM_FIELD_MAP against these names."""

from __future__ import annotations

import re

DENTIST_NAME = "nome"
EMAIL = "email"
PATIENT_NAME = "paciente"
TOOTH = "dente"
TEXT_FIELDS = (DENTIST_NAME, EMAIL, PATIENT_NAME, TOOTH)
FILE_FIELD = "file"
MAPPABLE_FIELDS = (*TEXT_FIELDS, FILE_FIELD)  # what RAIOX_JOTFORM_FIELD_MAP may map to

# Jotform's submissionID and formID: digits in practice; anything else URL-safe is accepted.
JOTFORM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
