"""twilio routes (being built)."""

from fastapi import APIRouter

router = APIRouter()
