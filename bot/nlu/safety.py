"""Detect emergencies in patient messages with deterministic rules, before any ML."""

# A table of named regex rules finds candidate symptoms; clause-scoped cues
# (negation, past, general question, hypothetical, administrative use) then
# decide whether a candidate describes a current emergency. Missing an
# emergency costs far more than a false alarm, so every suppressing cue is
# narrow and an explicit present-tense or first-person signal overrides it.

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass
from enum import StrEnum

from bot.nlu.prefilter import Prefilter

__all__ = ["EmergencyKind", "SafetyResult", "check", "normalised_forms"]

log = logging.getLogger(__name__)


class EmergencyKind(StrEnum):
    CARDIAC = "cardiac"
    STROKE = "stroke"
    BREATHING = "breathing"
    BLEEDING = "bleeding"
    SELF_HARM = "self_harm"
    OVERDOSE = "overdose"
    ANAPHYLAXIS = "anaphylaxis"
    SEIZURE = "seizure"
    UNCONSCIOUS = "unconscious"


@dataclass(frozen=True, slots=True)
class SafetyResult:
    is_emergency: bool
    kind: EmergencyKind | None
    matched: str | None


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    kind: EmergencyKind
    pattern: re.Pattern[str]
    # Clause-level exemption, for known benign uses of the same words.
    unless: re.Pattern[str] | None = None
    # Message-level context the rule needs (e.g. swollen lips only with an allergen).
    requires: re.Pattern[str] | None = None
    # Whether "had a ..." right before the match marks it as a past event;
    # off for self-harm because "I've had thoughts of ..." is still current.
    event: bool = True
    # Whether an allergen elsewhere in the message turns this into anaphylaxis.
    allergic: bool = False


_SAFE = SafetyResult(False, None, None)
# Returned only if a bug slips through; the caller still gets a result and the
# ML classifier downstream still sees the message.
_ERROR = SafetyResult(False, None, "internal_error")

_K = EmergencyKind


def _rx(pattern: str) -> re.Pattern[str]:
    """Compile a rule pattern (kept short so the rule table stays readable)."""
    return re.compile(pattern)


# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------

# Removed before NFKD, which would otherwise turn the acute accent into a space.
_APOSTROPHES = dict.fromkeys(map(ord, "'\u2019\u2018`\u00b4\u02bc\u2032\uff07"), None)
_SURROGATES = re.compile("[\ud800-\udfff]")
_NOISE = re.compile(r"[^a-z0-9.,!?;:\n ]+")
_NEWLINES = re.compile(r"\s*\n\s*")
_SPACES = re.compile(r"[ ]{2,}")
_STRETCHED = re.compile(r"([a-z])\1{2,}")


def normalised_forms(text: str) -> tuple[str, ...]:
    """Return a message as the rules read it: ASCII, lower case, punctuation kept (bot.nlu.clinical reads it too)."""
    return _normalise(text)


# The analyser reads each message here and again in bot.nlu.clinical, moments apart; a few entries are
# enough for that (and for a few threads at once) without keeping messages around.
@functools.lru_cache(maxsize=8)
def _normalise(text: str) -> tuple[str, ...]:
    """Return the searchable forms of a message (more than one when it is ambiguous)."""
    text = _SURROGATES.sub(" ", text.translate(_APOSTROPHES))
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = text.lower().replace("\t", " ").replace("\r", "\n")
    text = _NOISE.sub(" ", text)
    # A line break usually ends a thought, but SMS users also wrap mid-phrase
    # ("i cant\nbreathe"); read it both ways.
    forms = [_NEWLINES.sub(" . ", text)]
    if "\n" in text:
        forms.append(_NEWLINES.sub(" ", text))
    forms = [_SPACES.sub(" ", form).strip() for form in forms]
    if _STRETCHED.search(forms[0]):
        # "cantttt" wants one letter, "bleeeeding" wants two; try both.
        forms = [f for form in forms for f in (_STRETCHED.sub(r"\1\1", form), _STRETCHED.sub(r"\1", form))]
    return tuple(forms)


# ---------------------------------------------------------------------------
# Clause splitting: negation and tense only reach as far as the clause
# ---------------------------------------------------------------------------

_CLAUSE_BREAK = _rx(
    r"[.!?;:,]+"
    r"|\b(?:but|pero|though|although|however|aunque|sin embargo|except|excepto|anyway|anyways)\b"
    # "just"/"solo" start a new request ("..., just need my refill") but not
    # "he just collapsed"; only break when a request verb follows.
    r"|\b(?:just|solo|only)\b(?=\s+(?:need|needs|needed|want|wants|wanted|wanna|wondering|checking"
    r"|calling|asking|curious|letting|to|for|a quick|necesito|necesita|quiero|queria|quisiera"
    r"|para|es|era|llamo|pregunto|preguntar)\b)"
    r"|(?<!right )(?<!just )(?<!until )(?<!till )(?<!from )(?<!as of )\bnow\b"
    r"|\b(?:y )?ahora\b(?! mismo)"
)


def _clauses(text: str) -> list[tuple[int, int]]:
    """Split a normalised message into (start, end) clause spans."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in _CLAUSE_BREAK.finditer(text):
        spans.append((pos, m.start()))
        # Keep "now"/"ahora" inside the following clause so it can act as a
        # present-tense cue there.
        pos = m.start() if m.group(0).strip() in ("now", "ahora", "y ahora") else m.end()
    spans.append((pos, len(text)))
    return spans


# ---------------------------------------------------------------------------
# Shared vocabulary for the rules
# ---------------------------------------------------------------------------

_CANT_WORDS = r"cant|cnt|can ?not|unable to|couldnt|could not|cant even|can barely|cant really"
_CANT = f"(?:{_CANT_WORDS})"
_BREATHE = r"br(?:e|ea|ee|ae)(?:th|ht|t|f)(?:e|ing|in|en)?\b"
_CHEST = r"(?:chest|chset|chets|ches|cheast)"
_CHEST_PAIN = (
    r"(?:pain|pains|pian|pan|payn|hurt\w*|ache|aches|aching|tight\w*|pressure|heavy|heaviness"
    r"|discomfort|squeez\w*|crush\w*|burning|on fire|killing me)"
)
_SEIZ = r"(?:s(?:ei|ie|e|ee|ea|i)(?:z|s)(?:ure|ur|er|ire)s?|ceasures?)"
_QTY = (
    r"(?:[89]|[1-9]\d+|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen"
    r"|nineteen|twenty|thirty|forty|fifty|a hundred|hundreds?|dozens?|a dozen|a lot|lots|a bunch"
    r"|a handful|handfuls|way too many|too many|so many|way too much|too much|all|the whole"
    r"|a whole|an entire|the entire|half (?:a|the) bottle|multiple|tons)"
)
_DRUG = (
    r"(?:pills?|tablets?|tabs|capsules?|caps|meds|medications?|medicines?|gummies|xanax|tylenol"
    r"|advil|ibuprofen|aspirin|acetaminophen|paracetamol|oxys?|oxycodone|percs?|percocets?"
    r"|vicodin|benadryl|melatonin|insulin|opioids?|fentanyl|heroin|sleeping pills|bottles?"
    r"|packs?|packets?|box)"
)
_QTY_ES = (
    r"(?:todas|todos|toda|todo|muchas|muchos|mucha|mucho|demasiadas|demasiados|demasiada|demasiado"
    r"|un monton|un frasco|una caja|un bote|un puno|un punado|varias|varios|[89]|[1-9]\d+|diez"
    r"|quince|veinte|treinta|cuarenta|cincuenta|cien)"
)
_DRUG_ES = (
    r"(?:pastillas?|pildoras?|tabletas?|capsulas?|medicinas?|medicamentos?|pastis|insulina"
    r"|paracetamol|ibuprofeno|aspirinas?|tylenol|advil|calmantes|somniferos|clonazepam|frascos?"
    r"|cajas?)"
)
_ALLERGEN = _rx(
    r"\b(?:peanuts?|nuts?|tree nuts?|cashews?|almonds?|walnuts?|pecans?|pistachios?|shellfish"
    r"|shrimp|prawns?|lobster|crab|seafood|sesame|bees?|wasps?|hornets?|yellow ?jackets?|stings?"
    r"|stung|allergic|allergy|allergen|epi ?pens?|hives|mani|cacahuates?|cacahuetes?|nuez|nueces"
    r"|almendras?|mariscos?|camarones|camaron|abejas?|avispas?|picadura|(?:me|le|te) pico"
    r"|alergi\w*|ronchas|urticaria)\b"
)
# Words that make a bare "not responding"/"no responde" about things, not people.
_NOT_A_PERSON = (
    r"\b(?:app|website|site|web|page|portal|link|button|screen|computer|phone|email|emails|text"
    r"|texts|messages?|calls?|office|pharmacy|insurance|system|server|doctor|dr|nurse|front desk"
    r"|clinic|staff|anyone|nobody|you|pagina|aplicacion|telefono|correo|correos|mensajes?"
    r"|llamadas?|oficina|farmacia|sistema|medico|medica|doctora|enfermera|clinica|nadie|seguro)\b"
)
_ACCIDENT = (
    r"\b(?:shav\w*|cook\w*|chopp\w*|slic\w*|kitchen|stove|oven|iron|knife slipped|by accident"
    r"|accident\w*|opening|garden\w*|at work|on (?:a|the|some) (?:glass|can|paper|fence|nail"
    r"|metal|tin)|sin querer|cocin\w*|afeit\w*|rasur\w*|trabajando|picando)\b"
)


# ---------------------------------------------------------------------------
# Rule table. Order is priority: the first rule that fires decides the kind.
# ---------------------------------------------------------------------------

# "...if I died", "...when I'm gone": said of oneself, the end of a burden statement.
_GONE = (
    r"(?:if i (?:die|died|was gone|were gone|disappeared|disappear|wasnt here|werent here|killed my ?self)"
    r"|when i ?m gone)\b"
)

_RULES: tuple[_Rule, ...] = (
    # Self-harm first: the bot adds the crisis line for this kind, so it must
    # win over any medical symptom mentioned in the same message.
    _Rule("self_harm.kill_myself", _K.SELF_HARM,
          _rx(r"\bkill(?:ing|ed|l)?\s*(?:my ?self|me self|meself)\b"
              r"|\bkms\b(?<!\d kms)(?<!\dkms)"), event=False),
    _Rule("self_harm.want_to_die", _K.SELF_HARM,
          _rx(r"\b(?:want|wanna|wana|wnt|wish|wished|ready|trying)\s*(?:to|2)?\s*"
              r"(?:die|be dead|not be alive|not exist|not wake up|disappear forever)\b"
              r"|\bwish (?:i|id) (?:was|were|could be|had) (?:dead|died|never been born)\b"
              r"|\bbetter off (?:dead|without me)\b"), event=False),
    _Rule("self_harm.not_live", _K.SELF_HARM,
          _rx(r"\b(?:dont|do not|no longer|dont even|dont really)\s+(?:want|wanna|wish)\s+(?:to\s+)?"
              r"(?:live|be alive|be here|exist|go on|wake up)\b"
              r"|\bno (?:reason|point) (?:to|in) (?:live|living|going on|being alive)\b"
              r"|\bnothing (?:left )?to live for\b|\bnot worth living\b"
              r"|\bcant go on (?:anymore|living|like this)\b"), event=False),
    _Rule("self_harm.end_life", _K.SELF_HARM,
          _rx(r"\b(?:end|ending|ended|finish|finishing)\s+(?:it all|my (?:own )?life|things|everything)\b"
              r"|\b(?:take|taking)\s+my (?:own )?life\b"
              r"|\b(?:want|wanna|going|gonna|plan|planning|ready|thinking (?:about|of)|to)\s+(?:to\s+)?end it\b"
              r"|\bunalive\w*"), event=False),
    _Rule("self_harm.suicide", _K.SELF_HARM,
          _rx(r"\b(?:suicid|suisid|sucid|suicd)\w*"), event=False),
    _Rule("self_harm.hurt_self", _K.SELF_HARM,
          _rx(r"\bself ?harm\w*"
              r"|\b(?:want|wanna|going|gonna|thinking (?:about|of)|urges? to|trying|tried|keep|been"
              r"|plan\w*|feel like)\s+(?:to\s+)?(?:hurt\w*|harm\w*)\s+my ?self\b"
              r"|\b(?:hurt|harm)\w* my ?self on purpose\b"), event=False),
    _Rule("self_harm.cutting", _K.SELF_HARM,
          _rx(r"\b(?:cut|cutting|cuts|slit|slitting|slashed|burn|burning|burned)\s+"
              r"(?:my ?self|my (?:wrists?|arms?|legs?|thighs?|veins?))\b"),
          unless=_rx(_ACCIDENT), event=False),
    # A method named with intent is a plan ("gonna hang myself", "jump in front of a train").
    _Rule("self_harm.method", _K.SELF_HARM,
          _rx(r"\b(?:hang|hanging|hung|shoot|shooting|shot|drown|drowning|poison|poisoning|gas|gassing)\s+my ?self\b"
              r"|\b(?:want|wanna|going|gonna|plan\w*|thinking (?:about|of)|about|ready|trying|tried|feel like"
              r"|urges? to)\s+(?:to\s+)?(?:jump|throw my ?self|step|walk|drive|lie down)\s+"
              r"(?:off|from|in front of|into|onto|under)\s+(?:a|an|the|my)?\s*"
              r"(?:bridge|building|roof|rooftop|balcony|cliff|window|overpass|train|subway|bus|truck|car"
              r"|traffic|tracks|river|lake|sea|ocean)\b"
              r"|\b(?:jump|jumping|throw my ?self|step|stepping|walk|walking)\s+in front of\s+(?:a|an|the)\s+"
              r"(?:train|subway|bus|truck|car)\b"
              r"|\bput (?:a|the|my) (?:gun|bullet|pistol) (?:to|in) my (?:head|mouth)\b"), event=False),
    # Feeling like a burden is a suicide warning sign; said about oneself, it is treated as one.
    _Rule("self_harm.burden", _K.SELF_HARM,
          _rx(r"\b(?:no ?one|nobody|noone|nobody else)\s+(?:would|will|is going to|gonna|is gonna)\s+(?:even\s+)?"
              r"(?:(?:miss|care about) me(?:\s+" + _GONE + r")?|(?:care|notice)\s+" + _GONE + r")"
              r"|\b(?:everyone|everybody|every one|they|my (?:family|kids|children|wife|husband|parents)|the world)"
              r"\s+(?:would|will|d)\s+be better (?:off )?without me\b"), event=False),
    _Rule("self_harm.es_want_to_die", _K.SELF_HARM,
          _rx(r"\bme quiero (?:morir|matar|suicidar|cortar|lastimar)\b"
              r"|\bquiero (?:morirme|matarme|suicidarme|cortarme|lastimarme|hacerme dano"
              r"|quitarme la vida|dejar de vivir|dejar de existir|no existir|desaparecer|morir)\b"
              r"|\b(?:ganas|pensando|pienso|pensamientos|ideas|planeando|voy a|intente|intento)\s+"
              r"(?:de\s+|en\s+)?(?:morirme|matarme|suicidarme|quitarme la vida|cortarme|hacerme dano"
              r"|lastimarme|acabar con (?:todo|mi vida))\b"
              r"|\bquitarme la vida\b|\bacabar con (?:todo|mi vida)\b|\bme voy a matar\b"
              r"|\bmejor (?:estaria )?muert[oa]\b|\bno vale la pena vivir\b"), event=False),
    _Rule("self_harm.es_not_live", _K.SELF_HARM,
          _rx(r"\bno (?:quiero|tengo ganas de|deseo) (?:seguir )?(?:vivir|viviendo|estar viv[oa]"
              r"|existir|despertar)\b"), event=False),
    _Rule("self_harm.es_method", _K.SELF_HARM,
          _rx(r"\b(?:me voy a|quiero|voy a|pienso|pensando en|ganas de|intente|planeo|estoy por)\s+"
              r"(?:colgar(?:me)?|ahorcar(?:me)?|pegar(?:me)? un tiro|disparar(?:me)?|envenenar(?:me)?|ahogar(?:me)?"
              r"|(?:tirar(?:me)?|aventar(?:me)?|lanzar(?:me)?|arrojar(?:me)?)\s+(?:de|desde|a|al|por|frente a|debajo de)"
              r"\s+(?:un|una|el|la|los|las)?\s*(?:puente|edificio|techo|azotea|balcon|ventana|tren|metro|carro|coche"
              r"|camion|autobus|rio|mar|vias))\b"
              r"|\bme (?:colgare|ahorcare|voy a colgar|voy a ahorcar|tirare (?:de|desde|al|a) \w+)\b"), event=False),
    _Rule("self_harm.es_burden", _K.SELF_HARM,
          _rx(r"\b(?:todos|todo el mundo|mi familia|mis hijos|mi esposo|mi esposa|mis papas|mis padres|ellos)"
              r"\s+(?:estarian|estaran|estaria|estara|vivirian|vivira)\s+mejor sin mi\b"
              r"|\bnadie (?:me )?(?:extranaria|va a extranar|me va a extranar|me extranaria|notaria)\b"
              r"|\ba nadie le (?:importaria|importa|va a importar) si (?:me muero|muero|me mato|desaparezco)\b"), event=False),
    _Rule("self_harm.es_cutting", _K.SELF_HARM,
          _rx(r"\bme (?:corte|estoy cortando|sigo cortando|volvi a cortar|lastime|hice dano|raje|abri|voy a cortar)\s+"
              r"(?:las munecas|la muneca|los brazos|el brazo|las piernas|las venas|la vena|a proposito|otra vez"
              r"|de nuevo)\b"
              r"|\bme (?:estoy|sigo) cortando\b"
              r"|\bme corte(?=\s*(?:[.!?,;]|$))"),
          unless=_rx(_ACCIDENT), event=False),

    # Overdose. Intent ("to end it") is upgraded to self-harm after matching.
    _Rule("overdose.took_many", _K.OVERDOSE,
          _rx(r"\b(?:took|taken|take|taking|swallowed|swallow|ate|eaten|popped|downed|chugged|drank"
              r"|injected)\s+(?:like |about |around |maybe |over |almost |at least |probably )?"
              + _QTY + r"\s+(?:of\s+)?(?:(?:my|his|her|their|the|those|these|a|an|of)\s+){0,3}"
              r"(?:\w+\s+){0,2}?(?:" + _DRUG + r"|of (?:them|those|these|it))\b"),
          unless=_rx(r"\b(?:as (?:prescribed|directed|instructed|told|usual|always)|like (?:you|the doctor"
                     r"|dr \w+) said|like normal|like always|antibiotics?|course|on time"
                     r"|every (?:day|morning|night)|daily|this week|per day|a day|each day"
                     r"|over (?:the|a|several|few) (?:week|weeks|days|month))\b")),
    _Rule("overdose.bottle", _K.OVERDOSE,
          _rx(r"\b(?:took|swallowed|ate|drank|downed|chugged|finished|emptied)\s+"
              r"(?:(?:a|the|an|one|whole|entire|half|all|of|my|his|her)\s+)*(?:\w+\s+)?"
              r"(?:bottle|box|pack|packet|container|jar|blister)s?\b")),
    _Rule("overdose.word", _K.OVERDOSE,
          _rx(r"\bover ?doss?(?:e|ed|ing|es)\b|\bsobre ?dosis\b"
              r"|\b(?:i|he|she|they|we|someone|hes|shes|is|was|are|might have|may have|just|has|have|mom|dad|son"
              r"|daughter|friend|brother|sister|husband|wife|boyfriend|girlfriend|roommate|kid)\s+"
              r"(?:just\s+)?(?:odd|oded|od|ods|oding)\b")),
    # Poisoning has no kind of its own; it needs the same urgent response.
    _Rule("overdose.poison", _K.OVERDOSE,
          _rx(r"\b(?:drank|drunk|swallowed|ate|eaten|ingested|got into|chugged|licked)\s+(?:some |the |a |an "
              r"|bottle of |a bottle of |some of (?:the|my) )?(?:bleach|antifreeze|drain cleaner|detergent"
              r"|laundry pods?|tide pods?|rat poison|poison|lighter fluid|windshield fluid|button batter\w*"
              r"|batter(?:y|ies)|lye|pesticide|weed killer|cleaning (?:product|fluid|solution))\b"
              r"|\b(?:tomo|bebio|trago|se comio|ingirio|se tomo|se trago|comio)\s+(?:\w+\s+){0,3}?"
              r"(?:cloro|lejia|veneno|raticida|detergente|anticongelante|pilas?|bateria|destapacanos|insecticida)\b")),
    _Rule("overdose.es_took_many", _K.OVERDOSE,
          _rx(r"(?:\b(?:me|se|te|le)\s+(?:tome|tomo|trague|trago|tomaron|acabe|acabo|bebi|bebio|comi|comio"
              r"|ingirio|ingeri)|\b(?:ya\s+)?(?:tome|trague|ingeri|ingirio))\s+(?:como |unas |unos )?" + _QTY_ES
              + r"\s+(?:de\s+)?(?:(?:las|los|mis|sus|tus|el|la|un|una|de)\s+){0,2}(?:\w+\s+){0,2}?"
              + _DRUG_ES + r"\b"),
          unless=_rx(r"\b(?:de hoy|del dia|como me (?:dijo|dijeron|indic\w+)|a tiempo|antibiotic\w*)\b")),

    # Anaphylaxis: airway swelling. Lips/face/swallowing need an allergen in
    # the message because they are common and usually benign on their own.
    _Rule("anaphylaxis.throat_closing", _K.ANAPHYLAXIS,
          _rx(r"\bthroat\b[^.!?,;]{0,25}?\b(?:closing|closed|closes|tight|tightening|tighter)\b"
              r"|\b(?:tight|closing)\s+throat\b"
              r"|\bgarganta\b[^.!?,;]{0,20}?\b(?:cerrando|cierra|cerro|cerrada|apretada)\b"
              r"|\b(?:cerrando|cierra|cerro)\b[^.!?,;]{0,15}?\bgarganta\b")),
    _Rule("anaphylaxis.tongue", _K.ANAPHYLAXIS,
          _rx(r"\btongue\b[^.!?,;]{0,25}?\b(?:swell\w*|swollen|huge|puff\w*)"
              r"|\b(?:swollen|swelling)\s+tongue\b"
              r"|\blengua\b[^.!?,;]{0,20}?\b(?:hinch\w*|inflamad\w*)"
              r"|\b(?:hinch\w*|inflam\w*)\s+(?:\w+\s+){0,2}lengua\b")),
    _Rule("anaphylaxis.word", _K.ANAPHYLAXIS,
          _rx(r"\banaph\w*|\banafil\w*|\banafla\w*|\b(?:choque|shock) anafil\w*")),
    _Rule("anaphylaxis.severe_reaction", _K.ANAPHYLAXIS,
          _rx(r"\b(?:(?:really|very|super|bad|severe|serious|major|strong|terrible|massive)\s+)+allergic reaction\b"
              r"|\breaccion alergica\s+(?:muy\s+)?(?:grave|fuerte|severa|seria|terrible)\b"
              r"|\b(?:grave|fuerte|severa|seria)\s+reaccion alergica\b")),
    _Rule("anaphylaxis.epipen_used", _K.ANAPHYLAXIS,
          _rx(r"\b(?:used|using|gave (?:him|her|them)|jabbed|injected|had to use)\s+"
              r"(?:my |his |her |their |the |an |a )?epi ?pens?\b"
              r"|\b(?:le |me )?(?:puse|puso|pusimos|use|uso)\s+(?:el |la |su |mi )?epi ?pen\b")),
    _Rule("anaphylaxis.throat_swelling", _K.ANAPHYLAXIS,
          _rx(r"\bthroat\b[^.!?,;]{0,25}?\b(?:swell\w*|swollen)\b|\b(?:swollen|swelling)\s+throat\b"
              r"|\bgarganta\b[^.!?,;]{0,20}?\b(?:hinch\w*|inflamad\w*)|\bhinch\w*\s+(?:\w+\s+){0,2}garganta\b"),
          requires=_ALLERGEN),
    _Rule("anaphylaxis.face_swelling", _K.ANAPHYLAXIS,
          _rx(r"\b(?:lips?|face|mouth|eyes)\b[^.!?,;]{0,25}?\b(?:swell\w*|swollen|puff\w*|blowing up)"
              r"|\b(?:swelling|swollen|puffy)\s+(?:lips?|face)\b"
              r"|\b(?:labios?|cara|boca|ojos)\b[^.!?,;]{0,20}?\b(?:hinch\w*|inflamad\w*)"
              r"|\b(?:hinch\w*|inflam\w*)\s+(?:\w+\s+){0,2}(?:labios?|cara|boca|ojos)\b"),
          requires=_ALLERGEN),
    _Rule("anaphylaxis.cant_swallow", _K.ANAPHYLAXIS,
          _rx(r"\b(?:" + _CANT_WORDS + r"|hard to|trouble|difficulty)\s+swallow\w*"
              r"|\bno (?:puedo|puede) tragar\b"),
          requires=_ALLERGEN),

    # Cardiac: chest pain in its many spellings, heart attack, arrest.
    _Rule("cardiac.chest_pain", _K.CARDIAC,
          _rx(r"\b" + _CHEST + r"\s*(?:(?:is|feels|feel|feeling|has been|keeps|started|starts|getting"
              r"|really|so|very|super|kinda|hella|is really|just|like|its|it is|as if)\s+)*" + _CHEST_PAIN + r"\b"
              r"|\b(?:pain|pressure|tightness|heaviness|squeezing|discomfort|ache)\s+"
              r"(?:in|on|across|around)\s+(?:my |his |her |their |the )?chest\b"
              r"|\b(?:tight|heavy|crushing|squeezing|stabbing)\s+chest\b(?!\s+(?:cold|congestion|cough|infection|x))")),
    # "My heart hurts" is how some people say chest pain; heartache over a loss is left out.
    _Rule("cardiac.heart_pain", _K.CARDIAC,
          _rx(r"\b(?:my|his|her) heart (?:is |keeps |has been |really |so |just )?(?:hurt\w*|ach\w*|pain\w*|squeez\w*"
              r"|pounding and (?:hurt\w*|ach\w*)|feels (?:tight|heavy|like (?:its|it is) being squeezed))\b"
              r"|\b(?:me|le) duele (?:mucho |muchisimo )?el corazon\b|\bdolor (?:en el|del) corazon\b"),
          unless=_rx(r"\b(?:broke|broken|heartbroken|heart ?break|left me|break ?up|broke up|divorce\w*|miss\w*"
                     r"|sad\w*|grie\w*|lonely|loss|lost|died|passed away|funeral|for (?:you|her|him|them|my)"
                     r"|me dejo|extran\w*|triste\w*|murio|fallecio|perdi)\b")),
    # How people describe angina without naming it: gripping the chest, or a
    # weight pressing on it.
    _Rule("cardiac.chest_gesture", _K.CARDIAC,
          _rx(r"\b(?:clutch\w*|grabb?\w*|grip\w*|holding|clenching)\s+(?:at\s+)?(?:my |his |her |their |the )?chest\b"
              r"|\b(?:sitting|standing|pressing|pushing|squeezing|stepping|crushing)\s+(?:on|down on)\s+"
              r"(?:my |his |her |their |the )?chest\b"
              r"|\b(?:agarra\w*|aprieta\w*|sujeta\w*)\s+(?:el |su |mi )?pecho\b"
              r"|\b(?:sentado|encima|aplastando|apretando)\s+(?:en |de )?(?:el |mi |su )?pecho\b")),
    _Rule("cardiac.heart_attack", _K.CARDIAC,
          _rx(r"\b(?:heart|hart|heat|hearth|harte)\s*(?:attack|atack|attak|atak|attac|attck)\w*"
              r"|\bcardiac arrest\b|\bheart (?:has )?stopped\b"),
          unless=_rx(r"\b(?:gave|give|giving|gonna give|going to give|almost|nearly)\s+"
                     r"(?:me |him |her |us |you )?(?:had |have )?(?:a )?(?:heart|hart) ?attack")),
    _Rule("cardiac.arm_radiating", _K.CARDIAC,
          _rx(r"\bpain\s+(?:\w+\s+){0,3}(?:down|into|to|radiating to|spreading to)\s+"
              r"(?:my |his |her )?(?:left arm|jaw)\b")),
    _Rule("cardiac.es_chest_pain", _K.CARDIAC,
          _rx(r"\bdolor\s+(?:\w+\s+){0,3}?(?:de|en el|en mi|del|en)\s+pecho\b"
              r"|\b(?:me|le|te|nos)\s+duele\w*\s+(?:\w+\s+){0,2}?(?:el |mi )?pecho\b"
              r"|\b(?:me|le|te|nos)\s+(?:esta|estan)\s+doliendo\s+(?:\w+\s+){0,2}?(?:el |mi )?pecho\b"
              r"|\bpecho\s+(?:me |le )?(?:duele|dolia|arde|aprieta|oprime)\b"
              r"|\b(?:presion|opresion|apreton|ardor)\s+(?:fuerte\s+)?(?:en el|en mi|del|de|en)\s+pecho\b")),
    _Rule("cardiac.es_heart_attack", _K.CARDIAC,
          _rx(r"\b(?:infarto|infartando|infartad[oa]|ataque (?:al|de|del) corazon|ataque cardiaco"
              r"|paro cardiaco|paro cardiorespiratorio)\b(?! cerebral)")),

    # Stroke: face, speech, one-sided weakness, sudden confusion (BE-FAST).
    _Rule("stroke.face", _K.STROKE,
          _rx(r"\b(?:face|mouth|smile|eyelid)\b[^.!?,;]{0,25}?\b(?:droop\w*|dropping|sag\w*|crooked"
              r"|lopsided|uneven|twisted|paralyz\w*|fallen|slumped|numb|tingling)\b"
              r"|\b(?:droop\w*|crooked|lopsided|saggy|sagging)\s+(?:face|smile|mouth)\b"),
          unless=_rx(r"\b(?:botox|filler|fillers|bells palsy|dental|dentist|novocaine|numbing|root canal"
                     r"|filling|tooth|wisdom|anesthe\w*|cold weather|freezing)\b")),
    _Rule("stroke.speech", _K.STROKE,
          _rx(r"\bslurr?(?:ing|ed|s)?\b"
              r"|\b(?:speech|words|talking)\b[^.!?,;]{0,20}?\b(?:garbled|jumbled|not making sense)\b"
              r"|\b(?:" + _CANT_WORDS + r"|having trouble|trouble|struggling to)\s+(?:talk|speak)\s+"
              r"(?:right(?!\s+now)|properly|clearly|normally|straight)\b"
              r"|\b(?:suddenly|all of a sudden)\s+(?:" + _CANT_WORDS + r")\s+(?:talk|speak)\b"
              r"|\b(?:talking|speaking|saying)\s+(?:\w+\s+)?(?:gibberish|nonsense)\b"
              r"|\b(?:he|she|hes|shes|they|theyre|dad|mom)\s+(?:isnt|is not|arent|are not|s not|not)\s+"
              r"making (?:any )?sense\b"
              r"|\bworst headache (?:of|in) (?:my|his|her|their) life\b"
              r"|\bpeor dolor de cabeza de (?:mi|su) vida\b"
              r"|\b(?:habla|dice) (?:incoherencias|cosas sin sentido|puras incoherencias)\b")),
    _Rule("stroke.one_side", _K.STROKE,
          _rx(r"\b(?:one|1|left|right|his left|his right|her left|her right|my left|my right)\s+side\b"
              r"[^.!?,;]{0,30}?\b(?:numb\w*|weak\w*|limp|paralyz\w*|droop\w*|dead|tingl\w*|wont move"
              r"|cant move)"
              r"|\b(?:numb\w*|weak\w*|paraly\w*|tingl\w*)\s+(?:\w+\s+){0,3}?on (?:one|the left|the right"
              r"|his left|her left|my left|his right|her right|my right|1) side\b")),
    _Rule("stroke.sudden", _K.STROKE,
          _rx(r"\b(?:sudden(?:ly)?|all of a sudden|out of nowhere)\b[^.!?,;]{0,30}?\b(?:numb\w*|weak\w*"
              r"|paraly\w*|confus\w*|(?:cant|cannot|can not|couldnt) (?:move|lift|feel|raise|see|walk))"
              r"|\b(?:numb\w*|weak\w*|paraly\w*|confus\w*)\b[^.!?,;]{0,30}?\b(?:suddenly|all of a sudden"
              r"|out of nowhere)\b")),
    _Rule("stroke.limb", _K.STROKE,
          _rx(r"\b(?:" + _CANT_WORDS + r")\s+(?:move|lift|raise|feel|use)\s+(?:his|her|my|their)\s+"
              r"(?:left |right )?(?:arm|leg|hand|side)\b"
              r"|\b(?:left|right|his|her|my)\s+(?:arm|leg|hand)\s+(?:(?:is|went|feels|feel|gone|got|has gone"
              r"|suddenly|all)\s+)*(?:numb|weak|limp|dead|paralyzed)\b"
              r"|\bno (?:siento|puedo sentir|puede sentir|siente) (?:el|la|mi|su) (?:brazo|pierna|mano|cara"
              r"|lado)\b"),
          unless=_rx(r"\b(?:surgery|shoulder|injury|injured|fracture|broke|broken|cast|sprain\w*|rotator"
                     r"|arthritis|workout|gym|slept on|sleeping on|fell asleep on|shot|vaccine|injection"
                     r"|vacuna|inyeccion|dormi sobre)\b")),
    _Rule("stroke.word", _K.STROKE,
          _rx(r"\b(?:having|havin|is this|its|it is|think its|this is|might be|could be|may be|just had"
              r"|looks like|like)\s+(?:a |an )?(?:mini\s+|small\s+|massive\s+)?(?:stroke|strok|storke|stoke)\b"
              r"(?! of)")),
    _Rule("stroke.alone", _K.STROKE,
          _rx(r"^(?:help |please )?(?:a |an )?(?:stroke|strok|storke)(?: help| please)?[\s.!?]*$")),
    _Rule("stroke.es_face_speech", _K.STROKE,
          _rx(r"\b(?:cara|boca|labio|sonrisa)\s+(?:\w+\s+){0,2}?(?:caida|torcida|de lado|ladeada|desviada"
              r"|paralizada|dormida)\b"
              r"|\bse (?:le|me) (?:cayo|esta cayendo|cae|durmio|adormecio|paralizo|torcio)\s+"
              r"(?:la |el |media |un lado de la )?(?:cara|boca|brazo|pierna|mitad|lado)\b"
              r"|\bhabla\s+(?:\w+\s+)?(?:arrastrada|trabada|enredada)\b|\barrastra (?:las palabras|la lengua)\b"
              r"|\bno (?:puede|puedo) (?:hablar bien|mover (?:el brazo|la pierna|un lado|el lado|la mano|nada))")),
    _Rule("stroke.es_one_side", _K.STROKE,
          _rx(r"\b(?:debilidad|adormec\w*|entumec\w*|hormigueo|paralisis|dormid[oa]|paralizad[oa])\b"
              r"[^.!?,;]{0,30}?\b(?:un lado|lado (?:izquierdo|derecho)|mitad del cuerpo|media cara)\b"
              r"|\b(?:un lado|lado izquierdo|lado derecho|mitad del cuerpo)\s+(?:\w+\s+){0,3}?"
              r"(?:dormid|adormec|paraliz|debil|entumec)\w*"
              r"|\bde (?:repente|golpe|pronto)\b[^.!?,;]{0,30}?\b(?:confundid\w*|no (?:puedo|puede) "
              r"(?:mover|hablar|ver|caminar|levantar)|debil\w*|adormec\w*|entumec\w*|paraliz\w*"
              r"|se (?:me|le) durmio)"
              r"|\b(?:confundid\w*|debil\w*|adormec\w*|entumec\w*|paraliz\w*|(?:me|le) durmio)\b"
              r"[^.!?,;]{0,30}?\bde (?:repente|golpe|pronto)\b")),
    _Rule("stroke.es_word", _K.STROKE,
          _rx(r"\b(?:derrame cerebral|embolia|ictus|accidente cerebrovascular|infarto cerebral"
              r"|trombosis cerebral)\b"
              r"|\b(?:dando|dio|teniendo|tiene)\s+(?:un )?derrame\b")),

    # Seizure happening now (not "seizure medication", not "has seizures").
    _Rule("seizure.having", _K.SEIZURE,
          _rx(r"\b(?:having|havin|has (?:a|another)|just had|had another|in the middle of|going into"
              r"|gone into|went into|started|starting|another)\s+(?:a |an |another )?(?:\w+\s+)?"
              + _SEIZ + r"\b"
              r"|\b" + _SEIZ + r"\s+(?:right now|now|rn|happening|currently|wont stop|isnt stopping)\b")),
    _Rule("seizure.alone", _K.SEIZURE,
          _rx(r"^(?:help |please )?(?:a |an )?" + _SEIZ + r"(?: help| please)?[\s.!?]*$")),
    _Rule("seizure.seizing", _K.SEIZURE,
          _rx(r"\b(?:seizing|siezing|seazing|convulsing|convulsed|convulses|having convulsions"
              r"|in convulsions|convulsionando|convulsiona|convulsiono)\b")),
    # Lay descriptions: "having a fit", foaming, uncontrolled jerking.
    _Rule("seizure.fit", _K.SEIZURE,
          _rx(r"\b(?:having|havin|is in|in|had)\s+(?:a |an )?(?:epileptic |bad |big )?fits?\b"
              r"|\bfoam\w* (?:at|from) (?:the |his |her )?mouth\b"
              r"|\b(?:shaking|jerking|twitching|convulsing)\s+(?:all over\s+)?(?:uncontrollably|violently)\b"
              r"|\b(?:whole body|arms and legs|body) (?:is |are |keeps? )?(?:jerking|shaking uncontrollably)\b"
              r"|\b(?:echando |sale |saca )?espuma (?:por|de) la boca\b"),
          unless=_rx(r"\b(?:about|over|because|tantrum|angry|mad|upset|boss|manager|customer|fits? (?:of|in)"
                     r"|fit (?:for|into|in)|fitting room)\b")),
    _Rule("seizure.es", _K.SEIZURE,
          _rx(r"\b(?:le|me|te)\s+(?:esta\s+)?(?:dando|dio|da)\s+(?:una\s+)?convulsion\w*"
              r"|\b(?:esta|estoy|estan)\s+teniendo\s+(?:una\s+)?convulsion\w*"
              r"|\btiene (?:una convulsion\b|convulsiones (?:ahora|ahorita|en este momento))"
              r"|\b(?:ataque|crisis) (?:epileptic[oa]|convulsiv[oa])\b")),

    # Breathing. Choking is airway obstruction, so it is never re-labelled as
    # anaphylaxis even when food allergens are mentioned.
    _Rule("breathing.cant", _K.BREATHING,
          _rx(r"\b" + _CANT + r"\s+(?:really\s+|even\s+|hardly\s+)?" + _BREATHE
              + r"|\b(?:barely|hardly|not|isnt|stopped|stop|quit|aint|no longer|wasnt|arent)\s+"
              + _BREATHE
              + r"|\b(?:" + _CANT_WORDS + r")\s+(?:catch|get)\s+(?:my|his|her|a|their)\s+breath\b"
              r"|\b(?:" + _CANT_WORDS + r")\s+get\s+(?:enough\s+)?air\b"),
          unless=_rx(r"\b(?:through|out of|from)\s+(?:my|his|her|the|one)\s+nose\b|\bnostril|\bapnea\b"
                     r"|\bcpap\b|\bsnor\w*"),
          allergic=True),
    _Rule("breathing.trouble", _K.BREATHING,
          _rx(r"\b(?:trouble|difficulty|difficult|hard|hard time|struggling|struggle|struggles|labored"
              r"|laboured|problems?)\s+(?:to\s+)?" + _BREATHE
              + r"|\b(?:very|really|so|severely|extremely|super|badly|too|seriously)\s+short of breath\b"
              r"|\bgasp\w*"),
          allergic=True),
    _Rule("breathing.choking", _K.BREATHING,
          _rx(r"\b(?:chok\w*|chocking|choaking|choacking)\b"),
          unless=_rx(r"\b(?:choking hazard|choked? up|choking up|chok\w* on (?:my|his|her) words|chokehold)\b")),
    _Rule("breathing.blue", _K.BREATHING,
          _rx(r"\b(?:turning|turned|going|gone|getting)\s+(?:\w+\s+)?(?:blue|purple|grey|gray)\b"
              r"|\blips\s+(?:are\s+)?(?:blue|purple)\b"
              r"|\blabios\s+(?:\w+\s+)?(?:morados|azules)\b|\bse (?:esta )?(?:poniendo|puso) (?:morad|azul)\w*")),
    _Rule("breathing.asthma", _K.BREATHING,
          _rx(r"\b(?:asthma|athsma|asma)\s+attack\b|\bataque de asma\b"
              r"|\b(?:inhaler|inhalador|nebulizer)\b[^.!?;]{0,30}?\b(?:not|isnt|is not|wont|doesnt|no)\s+"
              r"(?:working|helping|help|work|funciona|sirve|ayuda)\b")),
    _Rule("breathing.es", _K.BREATHING,
          _rx(r"\bno (?:puedo|puede|podia|pueden|logro|logra) respirar\b|\bno respira\w*|\bno respiro\b"
              r"|\bdej[oa] de respirar\b"
              r"|\b(?:me|le|te) falta (?:el )?aire\b|\bno (?:me|le) entra (?:el )?aire\b"
              r"|\b(?:me|le|te) cuesta (?:mucho |trabajo )?respirar\b"
              r"|\b(?:dificultad|problemas?) (?:para|al) respirar\b"),
          unless=_rx(r"\bpor la nariz\b|\bnariz tapada\b|\bahog\w* en (?:deudas|trabajo|papeles|facturas)\b"),
          allergic=True),
    _Rule("breathing.es_choking", _K.BREATHING,
          _rx(r"\batragant\w*|\b(?:me|te|se|le) (?:esta |estoy )?ahog\w*|\bahogando\b"),
          unless=_rx(r"\bahog\w* en (?:deudas|trabajo|papeles|facturas)\b")),

    # Severe bleeding: intensity or failure to stop, not any mention of blood.
    _Rule("bleeding.wont_stop", _K.BLEEDING,
          _rx(r"\b(?:bleed\w*|blood|nosebleed|hemorrhag\w*)\b[^.!?;]{0,40}?\b(?:wont|will not|doesnt"
              r"|does not|isnt|is not|cant|cannot|not|hasnt|has not|wouldnt)\s+(?:stop\w*|slow\w*|clot\w*)"
              r"|\b(?:wont|will not|doesnt|does not|cant|cannot|not|hasnt|isnt|wouldnt)\s+"
              r"(?:stop\w*|quit)\s+bleed\w*"
              r"|\bbleed\w*\b[^.!?;]{0,40}?\b(?:cant|cannot|can not|unable to)\s+(?:make|get)\s+it\s+"
              r"(?:to\s+)?stop")),
    _Rule("bleeding.heavy", _K.BLEEDING,
          _rx(r"\bbleed\w*\s+(?:\w+\s+)?(?:a lot|alot|heavily|badly|bad|profusely|so much|like crazy"
              r"|everywhere|nonstop|non stop|through|out|a ton|tons)\b"
              r"|\b(?:heavy|severe|massive|uncontrolled|serious|major|lots of)\s+bleeding\b"),
          unless=_rx(r"\b(?:money|cash|period|menstrua\w*|cycle|spotting)\b")),
    _Rule("bleeding.blood", _K.BLEEDING,
          _rx(r"\bblood\s+(?:is\s+)?(?:everywhere|all over|gushing|spurting|pouring|squirting|pumping)\b"
              r"|\b(?:lots|lot|so much|tons|a ton|pool|puddle|puddles|buckets) of blood\b"
              r"|\b(?:gushing|spurting|pouring|squirting|losing|lost)\s+(?:(?:a lot of|lots of|so much"
              r"|a ton of|too much)\s+)?blood\b"
              r"|\b(?:vomit\w*|throw\w* up|puk\w*|cough\w* up|spit\w* up)\s+(?:\w+\s+){0,2}?blood\b")),
    _Rule("bleeding.trauma", _K.BLEEDING,
          _rx(r"\b(?:stabbed|gunshot|gun shot|shot wound|stab wound|(?:was|been|got|just got|is|hes|shes)"
              r"\s+shot)\b(?!\s+(?:at|down|in the arm for|of))"
              r"|\b(?:apunalad\w*|acuchillad\w*|herida de bala|(?:le|me) dispararon|balead\w*)")),
    _Rule("bleeding.es", _K.BLEEDING,
          _rx(r"\bsangr\w*\s+(?:\w+\s+)?(?:mucho|muchisimo|demasiado|bastante|sin parar|a chorros"
              r"|un monton)\b"
              r"|\b(?:mucha|muchisima|demasiada|bastante|un monton de|charco de|chorros de) sangre\b"
              r"|\bno (?:para|deja|paro|dejaba|ha parado|ha dejado) de sangrar\b"
              r"|\bsangre por (?:todos lados|todas partes|todo)\b|\bhemorragia\b|\bdesangr\w*"
              r"|\b(?:vomit\w*|escup\w*|tos\w*)\s+(?:\w+\s+)?sangre\b")),

    # Unconscious or unresponsive person.
    _Rule("unconscious.word", _K.UNCONSCIOUS,
          _rx(r"\bun ?con(?:s?c?i?)(?:ous|ious|ius|ouse|shus)\b|\bin(?:s)?con(?:s)?c?iente\b"
              r"|\bout cold\b"),
          unless=_rx(r"\bunconscious bias\b")),
    _Rule("unconscious.unresponsive", _K.UNCONSCIOUS,
          _rx(r"\bunresponsiv\w*|\bnon ?responsive\b"), unless=_rx(_NOT_A_PERSON)),
    _Rule("unconscious.not_responding", _K.UNCONSCIOUS,
          _rx(r"\b(?:not|isnt|is not|aint|stopped|wont|will not|doesnt|does not|no longer)\s+"
              r"(?:respond|responding|responsive|reacting|react)\b"
              r"|\bno (?:reacciona|responde|despierta|se despierta|abre los ojos)\b"),
          unless=_rx(_NOT_A_PERSON)),
    _Rule("unconscious.wont_wake", _K.UNCONSCIOUS,
          _rx(r"\b(?<!\bi )(?<!\bme )(?:cant|cannot|can not|couldnt|unable to|wont|will not|doesnt|does not"
              r"|isnt|is not|not)\s+(?:wake|waking|wakeing)\s+(?:(?:him|her|them|my \w+)\s+)?up\b"
              r"|\b(?:cant|cannot|can not|couldnt|unable to)\s+(?:wake|rouse)\s+(?:him|her|them|my \w+)\b"
              r"|\bno (?:lo|la|le) (?:puedo|podemos|puede|pueden) despertar\b")),
    _Rule("unconscious.passed_out", _K.UNCONSCIOUS,
          _rx(r"\b(?:passed|pased|past|blacked|knocked)\s+out\b[^.!?,;]{0,30}?\b(?:wont|cant|isnt|not"
              r"|doesnt|hasnt|still|no)\b"
              r"|\b(?:just|suddenly)\s+(?:passed out|fainted|collapsed|blacked out)\b"
              r"|\b(?:is|hes|shes|still)\s+(?:passed out|out cold)\b"
              r"|\bcollaps(?:ed|ing|es)\b(?!\s+(?:lung|vein|veins))"
              r"|\bse (?:acaba|acaban) de (?:desmayar|desvanecer|desplomar)\b|\bse desplom\w*"
              r"|\b(?:se desmayo|desmayad[oa]|se desvanecio)\b[^.!?,;]{0,30}?\b(?:no|sigue|todavia|aun)\b"
              r"|\bperdio (?:el )?(?:conocimiento|sentido)\b|\bperdio la conciencia\b"
              r"|\b(?:fell|fallen|collapsed|went down|hit (?:his|her) head)\b[^.!?;]{0,30}?\b(?:isnt|is not"
              r"|wont|not|cant|doesnt|hasnt)\s+(?:moving|talking|answering|getting up|get up|responding|move)\b"
              r"|\b(?:se cayo|se desmayo|se desplomo|cayo al suelo|se golpeo la cabeza)\b[^.!?;]{0,30}?"
              r"\bno (?:se levanta|habla|se mueve|abre los ojos|contesta)\b")),
)


# ---------------------------------------------------------------------------
# Context cues that decide whether a matched symptom is current
# ---------------------------------------------------------------------------

# Uncertainty is not denial: "not sure if", "no se si" keep the symptom live.
_UNCERTAIN = _rx(
    r"\b(?:not sure|unsure|dont know|do not know|didnt know|idk|dunno|wondering|wonder|cant tell"
    r"|can not tell|no one|nobody|no idea|no way|no se|no sabemos|no sabe|no estoy segur[oa]"
    r"|cant stand|cant take|cant handle|cant bear|no aguanto|no soporto)\b(?:\s+(?:if|whether|si))?"
)
# A denial reaches the symptom only through a short run of filler words, so
# "didn't eat today, chest hurts" is not read as a denial of chest pain.
_NEG_TAIL = _rx(
    r"\b(?:no|not|never|nvr|without|dont|doesnt|didnt|havent|hasnt|hadnt|isnt|arent|wasnt|werent"
    r"|aint|no longer|denies|deny|denied|negative for|free of|nunca|sin|ni|tampoco|ningun|ninguna"
    r"|ninguno|jamas|nada de)\b"
    r"(?:\s+(?:have|had|has|having|got|get|gotten|feel|feeling|felt|any|a|an|the|more|much|really"
    r"|experienced|experiencing|been|kind of|sort of|type of|signs of|thoughts of|thinking|thoughts"
    r"|of|about|going|gonna|to|want|wanna|trying|planning|plan|on|me|my|his|her|suffering|currently"
    r"|tengo|tiene|tienen|tenia|tuve|tuvo|siento|hay|he|ha|le|te|se|el|la|los|las|un|una|mas|ya|duele"
    r"|dolor|nada|de|sufro|pensamientos|pensando|ideas|en|estoy|esta|sentido))*\s*$"
)
# "Never had chest pain like this" is an emergency, not a denial.
_NEG_OVERRIDE = _rx(r"\b(?:like this|this bad|this strong|tan fuerte|asi de)\b")
_RESOLVED_AFTER = _rx(
    r"(?<!not )(?<!hasnt )(?<!havent )(?<!wont )(?<!isnt )(?<!never )"
    r"\b(?:gone|went away|resolved|subsided|disappeared|eased up|has stopped|better now|got better"
    r"|under control|se (?:me |le )?(?:quito|paso|fue)|ya (?:paso|paro|se quito)|desaparecio|mejoro)\b"
)
_PAST = _rx(
    r"\b(?:\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|few|couple(?: of)?|several"
    r"|many|some)\s+(?:years?|yrs?|months?|mos|weeks?|wks?|decades?)\s+ago\b"
    r"|\byears ago\b|\blong time ago\b"
    r"|\blast (?:year|month|week|spring|summer|fall|autumn|winter|time|visit|appointment)\b"
    r"|\b(?:in|since|back in|during|from)\s+(?:19|20)\d\d\b"
    r"|\b(?:in|back in|en)\s+(?:january|february|march|april|june|july|august|september|october"
    r"|november|december|enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|octubre"
    r"|noviembre|diciembre)\b"
    r"|\bhistory of\b|\bhx of\b|\bwhen (?:i|he|she|we) was (?:a |younger|little|\d)|\bas a (?:kid|child|baby|teen)\b"
    r"|\bprevious\b|\bsurvivor\b"
    r"|\bhace (?:\d+ |un |una |unos |unas |dos |tres |cuatro |cinco |varios |varias |muchos |muchas )?"
    r"(?:anos?|meses|mes|semanas?|tiempo)\b|\bhace mucho\b"
    r"|\bel (?:ano|mes) pasado\b|\bla semana pasada\b|\ben (?:19|20)\d\d\b|\bdel? (?:19|20)\d\d\b"
    r"|\bde (?:nino|nina|chico|chica|pequeno|pequena|joven)\b|\bantecedentes?\b|\bhistorial\b"
)
# "had a seizure", "after my stroke": an event word right before the match.
_HAD_BEFORE = _rx(
    r"\b(?<!just )(?<!ive )(?<!have )(?<!has )(?<!hes )(?<!shes )(?<!weve )(?<!theyve )"
    r"(?:had|tuve|tuvo|tuvimos|tuvieron|sufri|sufrio|sufrieron|after|since|despues de|desde"
    r"|survived|sobrevivio|sobrevivi|recovering from|recovered from|post|when i had|when he had"
    r"|when she had)\s+(?:(?:a|an|my|his|her|their|un|una|mi|su|sus|mis|el|la|the|that|this|bad"
    r"|big|massive|small|mild|minor|major|some|first|serious|severe|another)\s+){0,3}$"
)
# Explicit present-tense markers beat past cues.
_PRESENT = _rx(
    r"\b(?:now|right now|rn|currently|at the moment|today|tonight|this (?:morning|afternoon|evening)"
    r"|just now|still|keeps?|getting worse|worse|since (?:this|last night|yesterday|an hour|\d)"
    r"|for the (?:past|last) \w+|\d+ (?:minutes?|mins?|hours?|hrs?) ago"
    r"|(?:happening|started|starting|having|hurts?|hurting|its|back|again) again"
    r"|like this|this bad|tan fuerte"
    r"|ahora|ahorita|hoy|esta (?:noche|manana|tarde)|todavia|aun|sigue|siguen|de nuevo|otra vez"
    r"|en este momento|empeor\w*|desde (?:ayer|anoche|hace un rato|esta)|hace un rato"
    r"|hace (?:\d+|unos|un par de|una|un) (?:minutos?|horas?))\b"
)
# General-information and hypothetical framing.
_INFO = _rx(
    r"\b(?:signs? of|symptoms? of|warning signs?|side effects?|adverse effects?|risks?|risk factors?"
    r"|at risk|prevent\w*|what causes|causes of|(?:can|could|does|do|may|might|will|would)\s+(?:\w+\s+){1,3}?causes?"
    r"|what (?:is|are) (?:a|an|the)|whats (?:a|an|the)"
    r"|how (?:do|can|would|should|to|does) (?:(?:i|you|we|one|someone|people|a person)\s+)?"
    r"(?:know|tell|recognize|spot|prevent|treat|identify|help|avoid|respond|use)"
    r"|what (?:to do|should (?:i|we|you) do|do (?:i|we|you) do) (?:if|when|for)"
    r"|in case|what if|first aid|cpr|class|classes|course|training|seminar|workshop|pamphlet"
    r"|brochure|article|leaflet|information|info about|info on|awareness|difference between"
    r"|is it normal|normal to|define|definition|asking for a friend|hypothetically"
    r"|(?:worried|afraid|scared|fear|terrified) (?:about|of) (?:having|getting|a|an)"
    r"|sintomas? de|senales de|signos de|efectos? secundarios?|riesgos?|prevenir|prevencion|evitar"
    r"|que causa|causas? de|puede causar|pueden causar|que es (?:un|una|el|la)"
    r"|como (?:saber|se sabe|reconocer|identificar|prevenir|evitar|ayudar|se trata)"
    r"|que (?:hacer|hago|debo hacer|se hace|hacemos) (?:si|cuando|en caso)|en caso de"
    r"|primeros auxilios|informacion|clase|curso|taller|folleto|es normal|diferencia entre"
    r"|si (?:me|le|te) (?:da|dan|llega|pasa|vuelve)|si vuelve)\b"
)
_HYPO_BEFORE = _rx(r"\b(?:if|suppose|supposing|si alguien|cuando alguien)\b")
_GENERIC_SUBJECT = _rx(
    r"\b(?:someone|somebody|anyone|anybody|a person|people|patients|a patient|kids|children|women|men"
    r"|elderly|teens|alguien|una persona|la gente|personas|pacientes|los ninos)\b"
)
# Used with .match(text, clause_start), so no "^" (which ignores pos).
_QUESTION_START = _rx(
    r"\s*(?:is|are|does|do|did|can|could|should|would|will|what|whats|which|how|why|when|where|who"
    r"|es|son|puede|pueden|que|cual|cuales|como|por que|cuando|donde|quien)\b"
)
_PERSONAL = _rx(
    r"\b(?:i|im|ive|my|me|he|hes|she|shes|his|her|we|were|our|us|they|their|mi|mis|yo|le|tengo|tiene"
    r"|estoy|esta|siento|nos|mom|dad|son|daughter|husband|wife|baby|mama|papa|hijo|hija|esposo|esposa)\b"
)
# First-person or witnessed present symptoms defeat info/hypothetical framing.
_STRONG_PRESENT = _rx(
    r"\b(?:i have|ive got|i got|i feel|im feeling|im having|i am having|having|am i|i think|i cant"
    r"|is (?:this|it|that)(?! normal| safe| possible| common| true| ok| okay| bad| dangerous| likely| serious)"
    r"|feels like|right now|currently|he is|she is|hes|shes|tengo|me duele|me esta|le esta|esta teniendo"
    r"|estoy teniendo|siento|ahorita|ahora mismo|en este momento"
    r"|(?:my|his|her|our) \w+ (?:is|has|cant|keeps)"
    r"(?! (?:worried|afraid|scared|asking|wondering|concerned|nervous|at risk|curious))"
    r"|(?:mi|su) \w+ (?:esta|tiene|no puede)(?! (?:preocupad\w*|asustad\w*))"
    r")\b"
)
# How bad it is right now only matters to someone who has it.
_INTENSITY = _rx(r"\b(?:this much|this bad|so bad|so much|like this|right now|tanto|tan fuerte|ahora mismo)\b")
# An explicit call for help is never a general question.
_URGENT = _rx(r"\b(?:help|911|ambulance|emergency|urgent|asap|hurry|ayuda|auxilio|ambulancia|urgencia|emergencia)\b")
_ADMIN_AFTER = _rx(
    r"\s*(?:\w+\s+)?(?:medications?|meds?|medicines?|prescriptions?|rx|refills?|records?|clinic"
    r"|specialist|doctor|dr|neurologist|cardiologist|follow ?ups?|followup|appointments?|appt|visit"
    r"|history|tests?|testing|screenings?|risk|prevention|program|rehab\w*|therapy|support|survivors?"
    r"|patients?|unit|ward|center|centre|team|education|awareness|hospital stay|hospitalization"
    r"|paperwork|forms?|claim|bill|insurance|plan|protocol|precautions|kit|training|workup|work up"
    r"|evaluation|report|results|bracelet|letter|note|class|classes|reversal|narcan|naloxone)\b"
)
_ADMIN_BEFORE = _rx(
    r"\b(?:medicamentos?|medicinas?|pastillas|recetas?|cita|consulta|expediente|registros?|clinica"
    r"|especialista|seguimiento|terapia|formulario|informe|prueba|examen|kit|programa|tratamiento"
    r"|medication|meds|refill|records|prescription|appointment|follow up|form|note|test|copy)\s+"
    r"(?:for|about|from|after|regarding|para|de|del|por)\s+(?:(?:la|las|el|los|mi|mis|su|sus|un|una"
    r"|my|his|her|the|a|an)\s+)?$"
)
# A clause that only reports recovery ("but he's fine now") cancels the one before.
_RECOVERY_CLAUSE = _rx(
    r"^\s*(?:and |y )?(?:it|its|it s|he|hes|she|shes|they|theyre|im|i am|i feel|i|we|everything"
    r"|ya|todo|se|le|me)\b[^.]*?\b(?:stopped|went away|gone|passed|better|fine|ok|okay|alright"
    r"|all right|breathing (?:again|normally|fine)|awake|responding|came to|woke up|bien|mejor|paso"
    r"|paro|se le quito|se me quito|desperto|reacciono)\b"
)
_RECOVERY_BLOCK = _rx(r"\b(?:not|isnt|hasnt|havent|wont|doesnt|no|never|nunca)\b")
# "...had chest pain this morning, it went away, now it's back".
_RECURRENCE = _rx(
    r"\b(?:(?:its|it is|it s|pain is|it came|it|came|coming|started|starting) back|came back"
    r"|started again|happening again|volvio|regreso|(?:me|le) (?:volvio|esta volviendo)"
    r"|(?:i am|im|i feel|feeling|i m) (?:now )?(?:again|that way again)|now again|again now"
    r"|ahora otra vez|otra vez ahora|de nuevo ahora|ahora de nuevo)\b"
)
_INTENT = _rx(
    r"\b(?:to end it|end it all|to die|kill (?:my|him|her)self|on purpose|intentionally|to not wake up"
    r"|so i (?:dont|wont) wake up|para (?:morir\w*|matarme|no despertar|acabar con todo"
    r"|quitarme la vida|suicid\w*)|a proposito|queria morir\w*)\b"
)


# Kinds whose symptom is present whatever the message asks for.
_CANNOT_WAIT = frozenset({_K.CARDIAC, _K.BREATHING, _K.SELF_HARM})
# "Is chest pain normal after the shot? It hurts now": a later clause says the general question is personal.
_LIVE_NOW = _rx(
    r"\b(?:it|this|that|mine|my \w+)\s+(?:hurts|is hurting|hurting|is happening|happens|is bad|is getting worse"
    r"|started|is back)\s+(?:now|right now|today)\b"
    r"|\bi (?:have|am having|m having|got) (?:it|this|that|them) (?:now|right now)\b"
    r"|\b(?:me|le) (?:duele|esta pasando|esta doliendo|paso) (?:ahora|ahorita|ahora mismo|hoy)\b"
    r"|\b(?:lo|la) tengo (?:ahora|ahorita|ahora mismo)\b"
)


# Cues are local; bounding what they scan keeps a 10,000-character message
# without punctuation linear instead of quadratic.
_WINDOW = 160
_TAIL = 80


def _suppressed(rule: _Rule, text: str, m: re.Match[str], start: int, end: int) -> str | None:
    """Return why a match does not describe a current emergency, or None if it does."""
    near_start = max(start, m.start() - _WINDOW)
    clause = text[near_start:min(end, m.end() + _WINDOW)]
    prefix = text[near_start:m.start()]
    tail = text[max(start, m.start() - _TAIL):m.start()]
    suffix = text[m.end():min(end, m.end() + _WINDOW)]
    if rule.unless is not None and rule.unless.search(clause):
        return "exempt"
    calm_prefix = _UNCERTAIN.sub(" ~ ", prefix)
    if _NEG_TAIL.search(_UNCERTAIN.sub(" ~ ", tail)) and not _NEG_OVERRIDE.search(clause):
        return "negated"
    if _RESOLVED_AFTER.search(suffix):
        return "resolved"
    if not _PRESENT.search(clause) and (
        _PAST.search(clause) or (rule.event and _HAD_BEFORE.search(tail))
    ):
        return "past"
    if not _URGENT.search(clause):
        framed = _INFO.search(clause) or _HYPO_BEFORE.search(calm_prefix)
        live = _STRONG_PRESENT.search(prefix) or _INTENSITY.search(clause)
        if framed and (_GENERIC_SUBJECT.search(clause) or not live):
            return "general"
        asks = _QUESTION_START.match(text, start) is not None
        if asks and not (_PERSONAL.search(prefix) or _INTENSITY.search(clause)):
            return "general"
    # "An appointment for my chest pain" is still chest pain now: for the kinds that cannot wait, only a
    # past or resolved mention (handled above) lets the request framing make it routine.
    if _ADMIN_AFTER.match(suffix) or (_ADMIN_BEFORE.search(tail) and rule.kind not in _CANNOT_WAIT):
        return "admin"
    return None


def _recovered_after(text: str, spans: list[tuple[int, int]], index: int) -> bool:
    """Tell whether the next non-empty clause only reports that things are fine again."""
    for i in range(index + 1, len(spans)):
        start, end = spans[i]
        clause = text[start:end].strip()
        if not clause or clause == "now":
            continue
        return bool(_RECOVERY_CLAUSE.match(clause)) and not _RECOVERY_BLOCK.search(clause)
    return False


def _finalise(rule: _Rule, text: str, suffix: str = "") -> SafetyResult:
    """Build the result for a fired rule, applying intent and allergen upgrades."""
    kind = rule.kind
    name = rule.name + suffix
    if kind is _K.OVERDOSE and _INTENT.search(text):
        kind, name = _K.SELF_HARM, name + "+intent"
    elif rule.allergic and _ALLERGEN.search(text):
        kind, name = _K.ANAPHYLAXIS, name + "+allergen"
    return SafetyResult(True, kind, name)


# A rule whose pattern has no match in a message neither fires nor leaves a dormant mention, so the rules
# the prefilter rules out (no string a match must start with is in the message) are skipped unchanged.
_PREFILTER = Prefilter({rule.name: rule.pattern for rule in _RULES})


def _evaluate(text: str) -> SafetyResult:
    """Run the rule table over one normalised form of a message."""
    # Clauses are split at the first match: most messages match no rule at all.
    spans: list[tuple[int, int]] = []
    starts: list[int] = []
    # Past or resolved mentions, kept in case a later clause says "it's back", and general questions, in
    # case one says "it hurts now"; one per rule is enough to decide.
    dormant: dict[str, tuple[int, _Rule, str]] = {}
    possible = _PREFILTER.possible(text)
    for rule in _RULES:
        if rule.name not in possible:
            continue
        if rule.requires is not None and not rule.requires.search(text):
            continue
        for m in rule.pattern.finditer(text):
            if not spans:
                spans = _clauses(text)
                starts = [s for s, _ in spans]
            index = bisect_right(starts, m.start()) - 1
            start, end = spans[index]
            reason = _suppressed(rule, text, m, start, end)
            if reason is None and _recovered_after(text, spans, index):
                reason = "resolved"
            if reason is None:
                return _finalise(rule, text)
            if reason in ("past", "resolved", "general") and rule.name not in dormant:
                dormant[rule.name] = (index, rule, reason)
    for index, rule, reason in dormant.values():
        if index + 1 >= len(spans):
            continue
        if reason == "general":
            if _LIVE_NOW.search(text, spans[index + 1][0]):
                return _finalise(rule, text, "+now")
        elif _RECURRENCE.search(text, spans[index + 1][0]):
            return _finalise(rule, text, "+recurrence")
    return _SAFE


def check(text: str) -> SafetyResult:
    """Decide whether a message is an emergency."""
    try:
        if not isinstance(text, str) or not text.strip():
            return _SAFE
        for form in _normalise(text):
            result = _evaluate(form)
            if result.is_emergency:
                return result
        return _SAFE
    except Exception:  # noqa: BLE001 - the safety gate must never take the bot down
        # Logged loudly (no text): the classifier is the only emergency net until this is fixed.
        log.exception("safety layer failed; falling back to the classifier")
        return _ERROR
