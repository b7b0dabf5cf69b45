"""Recognise questions only a clinician may answer, with deterministic rules, so they always reach one.

The classifier learns the clinic's topics from examples, and a clinical question often borrows a
topic's words: "are my results normal?" reads like a lab-status question, "can I skip my seizure meds
for a few days?" like a refill, "¿debo ir a urgencias?" like nothing it knows. Answered from those
topics, the patient gets a status, a form or a greeting where they asked for advice the bot must never
give. These rules catch the shapes of such questions (may I take, stop, skip or double a medicine;
should I go to the ER; is this normal; what does it mean; do I have an illness) in English and
Spanish, and the pipeline sends them to a nurse whatever the classifier thought.

A false match costs a nurse a look at a routine question; a miss can cost the patient advice from a
topic answer. The rules are still kept narrow: a drug, dose, result, symptom or illness word has to
be there, so "can I take my son to his appointment" stays with the bot.
"""

from __future__ import annotations

import re

from bot.nlu.safety import normalised_forms

__all__ = ["clinical_question"]

# Medicines by name: a question about one of these is a clinician's, whatever else the message is about.
_NAMED_DRUG = (
    r"(?:insulin|inhaler|antibiotics?|tylenol|advil|motrin|aleve|ibuprofen|aspirin|acetaminophen|paracetamol"
    r"|naproxen|benadryl|melatonin|metformin|lisinopril|amlodipine|atorvastatin|statins?|levothyroxine"
    r"|prednisone|birth control|blood thinners?|warfarin|coumadin|eliquis|xarelto|antidepressants?|sertraline"
    r"|zoloft|prozac|xanax|adderall|ozempic|wegovy|seizure meds|blood pressure (?:meds|pills|medicine|medication)"
    r"|insulina|inhalador|antibioticos?|ibuprofeno|acetaminofen|aspirina|metformina|anticonceptivos?"
    r"|anticoagulantes?)"
)
# Any medicine, named or not, or what a question about one points back to ("can I skip it?").
_DRUG = (
    r"(?:" + _NAMED_DRUG + r"|pills?|tablets?|tabs|capsules?|meds|medications?|medicines?|dose|doses"
    r"|vitamins?|supplements?|shots?|vaccines?|booster|one|two|2|another|more|extra)"
)
_DRUG_ES = (
    r"(?:" + _NAMED_DRUG + r"|pastillas?|pildoras?|tabletas?|capsulas?|medicinas?|medicamentos?|dosis"
    r"|vacunas?|vitaminas?|tylenol|advil|paracetamol)"
)
# Verbs that only ever concern a medicine, so "it"/"them" after them is one ("can I skip it?").
_MED_VERB_PRONOUN = r"(?:skip|double|halve|crush|chew|stop taking|keep taking|take more of)\s+(?:it|them|those|these)"
_ILLNESS = (
    r"(?:covid|the flu|flu|strep|an infection|infected|infection|cancer|diabetes|diabetic|pneumonia"
    r"|bronchitis|uti|a uti|an std|std|sti|an sti|pregnant|shingles|measles|lyme|a concussion|concussion"
    r"|broken|fractured|allergic|an allergy|contagious|serious|dangerous|cancerous)"
)
_ILLNESS_ES = (
    r"(?:covid|gripe|influenza|una infeccion|infeccion|cancer|diabetes|neumonia|embarazada|contagioso"
    r"|contagiosa|grave|peligroso|peligrosa|alergia|alergico|alergica|roto|rota|fractura)"
)

_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    # Taking, stopping, skipping or changing a medicine.
    ("medication_change", re.compile(
        r"\b(?:can|could|should|may|must|do|is it (?:ok|okay|safe|fine) (?:if|to)|ok (?:if|to)|okay (?:if|to)|safe to)"
        r"\s+(?:i|we|he|she|they|my (?:son|daughter|kid|child|baby|husband|wife|mom|dad))?\s*"
        r"(?:still\s+|just\s+|also\s+)?(?:take|took|keep taking|stop|stop taking|quit|skip|miss|double|halve"
        r"|cut|split|crush|chew|increase|decrease|lower|raise|change|switch|mix|combine|drink (?:alcohol|wine|beer)"
        r" (?:with|on)|go off|come off|restart|start)\s+(?:my |the |his |her |their |a |an |some |taking |it |them )?"
        r"(?:\w+\s+){0,2}?" + _DRUG + r"\b"
        r"|\b(?:can|could|should|may) (?:i|we|he|she) " + _MED_VERB_PRONOUN + r"\b"
        r"|\b(?:can|could|should) i (?:skip|miss|stop) (?:a few|a couple|some|(?:\d+|one|two|three) )\s*(?:days?|doses?)\b"
        r"|\bhow (?:much|many) (?:\w+ )?(?:should|can|do) (?:i|we|he|she) (?:take|give|use)\b"
        r"|\b(?:what|which) (?:dose|dosage)\b"
    )),
    ("medication_change_es", re.compile(
        r"\b(?:puedo|debo|podria|deberia|se puede|es seguro|esta bien)\s+(?:seguir\s+)?"
        r"(?:tomar(?:me)?|dejar de tomar|dejar|suspender|saltar(?:me)?|doblar|duplicar|aumentar|bajar|partir"
        r"|combinar|mezclar|cambiar)\s+(?:mi |mis |el |la |los |las |un |una |unos |unas )?(?:\w+\s+){0,2}?"
        + _DRUG_ES + r"\b"
        r"|\bcuant[ao]s? (?:\w+ )?(?:debo|puedo|tengo que) (?:tomar|darle)\b"
    )),
    # Whether to seek care, or whether something is normal.
    ("seek_care", re.compile(
        r"\bshould (?:i|we|he|she) (?:go to|be seen at|head to|call) (?:the )?(?:er|e r|emergency|hospital"
        r"|urgent care|911|a doctor)\b"
        r"|\bdo (?:i|we) need to go to (?:the )?(?:er|emergency|hospital|urgent care)\b"
        r"|\bshould (?:i|we) be (?:worried|concerned)\b|\bis (?:this|it|that) something to worry about\b"
    )),
    ("seek_care_es", re.compile(
        r"\b(?:debo|debemos|tengo que|deberia) (?:ir|llevarl[oa]) (?:a|al) (?:urgencias|emergencias|la emergencia"
        r"|la sala de emergencias|el hospital|hospital|urgencias)\b"
        r"|\b(?:me|nos) (?:debo|debemos) preocupar\b|\bes (?:para|de) preocuparse\b"
    )),
    # What a result, a symptom or a finding means.
    ("meaning", re.compile(
        r"\b(?:is|are) (?:this|it|that|these|those|my|his|her|the) (?:\w+ ){0,3}?(?:normal|abnormal|bad|good|high"
        r"|low|concerning|dangerous|serious|elevated|too high|too low)\b(?! (?:time|day|hours?|week))"
        r"|\bwhat does (?:it|this|that|my|the|a) (?:\w+ ){0,4}?mean\b|\bwhat do (?:my|the|these|those) (?:\w+ ){0,3}?mean\b"
        r"|\b(?:tested|test(?:s)? came back|results? came back|came back|result(?:s)? (?:is|are|was|were)) positive\b"
        r"|\bi tested positive\b"
        r"|\b(?:is|could) (?:this|it|that) (?:be )?" + _ILLNESS + r"\b"
        r"|\b(?:do|could|might) i have " + _ILLNESS + r"\b"
    )),
    ("meaning_es", re.compile(
        r"\b(?:es|son|esta|estan) (?:normal|normales|bueno|buenos|malo|malos|alto|altos|bajo|bajos|grave)\b"
        r"|\bque significa\b|\bque quiere decir\b"
        r"|\b(?:sali|salio|salieron|di|dio|dieron) positiv[oa]s?\b"
        r"|\b(?:es|sera|puede ser) " + _ILLNESS_ES + r"\b|\btengo " + r"(?:covid|gripe|cancer|una infeccion)\b"
    )),
)


_NAMED = re.compile(r"\b" + _NAMED_DRUG + r"\b")
# The clinic's approved test-preparation reply already covers "can I take my usual pills before the blood
# test?" (follow the order's instructions, or reply HUMAN for a nurse); a medicine by name still goes to one.
_PREP_INTENT = "test_preparation"


def clinical_question(text: str, *, intent: str | None = None) -> str | None:
    """Return the name of the rule that finds a clinical question in a message, or None.

    `intent` is the classifier's reading: a question about unnamed medicines around a test is left
    to the test-preparation answer.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    for form in normalised_forms(text):
        for name, pattern in _RULES:
            if not pattern.search(form):
                continue
            if name.startswith("medication_change") and intent == _PREP_INTENT and not _NAMED.search(form):
                continue
            return name
    return None
