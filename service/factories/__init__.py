"""Endpoint factories (attrs classes like titiler.core.factory), one per endpoint group, each
assembling its routes from typed dependencies (service/params/)."""
