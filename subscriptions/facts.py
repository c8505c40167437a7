"""What Stripe and the merchant tell us about a customer, read into facts Recoup uses: the
customer's time zone (and where it came from), SMS consent, locale and phone number.

Pure functions of their inputs: no ORM, no clock, no network. Country → zones comes from
the IANA tz database as pytz ships it (`pytz.country_timezones`); the state, province and
postal-code tables below are ours, for the countries whose regions span time zones.

Time zone, in order (`time_zone_guess`):
1. the merchant's own value in the customer's metadata (an IANA name, validated);
2. the billing address: its country when it has one zone, else its state or province,
   else its postal code (which also finds the state when the address has none: Stripe's
   checkout often collects only country and postal code);
3. the card's country when that country has one zone;
4. the store's zone (kept as "" so a change of the store's zone follows).
A zone set by the merchant (metadata, or our API) beats any derived guess
(`time_zone_decide`).
"""

from __future__ import annotations

import datetime as dt
import functools
import unicodedata
import zoneinfo
from dataclasses import dataclass, field

import phonenumbers
import pytz

# Where a customer's time zone came from (Customer.time_zone_source).
METADATA = "metadata"
ADDRESS = "address"
CARD_COUNTRY = "card_country"
STORE = "store"
API = "api"
MERCHANT_SET = frozenset({METADATA, API})

# ------------------------------------------------------------------ zone names

# Files in the tz database that are not zones a person lives in.
_NOT_ZONES = frozenset({"Factory", "localtime", "posixrules"})


@functools.cache
def _zones_by_folded_name() -> dict[str, str]:
    return {
        name.casefold(): name for name in zoneinfo.available_timezones() if name not in _NOT_ZONES
    }


def zone_valid(value) -> str | None:
    """The IANA zone `value` names, spelt as the tz database spells it; None if it names
    none ("europe/berlin" is Europe/Berlin; "CET+1", "Berlin" and "" are nothing)."""
    if not isinstance(value, str):
        return None
    return _zones_by_folded_name().get(value.strip().casefold())


# Offsets compared to decide whether two zones of a country keep the same time (winter,
# spring, summer and autumn of one year): Europe/Berlin and Europe/Busingen do.
_SAMPLES = tuple(dt.datetime(2025, m, 15, 12, tzinfo=dt.UTC) for m in (1, 4, 7, 10))


def _same_time(zones) -> bool:
    offsets = {
        tuple(s.astimezone(zoneinfo.ZoneInfo(z)).utcoffset() for s in _SAMPLES) for z in zones
    }
    return len(offsets) == 1


@functools.cache
def country_zone(country: str) -> str | None:
    """The zone of a country that keeps one time throughout (DE, FR, JP, ...), or None
    (US, BR, an unknown code)."""
    try:
        zones = [
            z for z in pytz.country_timezones[(country or "").strip().upper()] if zone_valid(z)
        ]
    except KeyError:
        return None
    if not zones or not _same_time(zones):
        return None
    return zones[0]  # zone.tab lists a country's principal zone first


@functools.cache
def zone_country(zone: str) -> str | None:
    """The country a zone belongs to (Europe/Berlin: DE), or None (UTC)."""
    for country, zones in pytz.country_timezones.items():
        if zone in zones:
            return country
    return None


# ------------------------------------------------------------------ regions and postal codes


@dataclass(frozen=True)
class Regions:
    """A country whose regions keep different times.

    states: code -> (zone, other names); split: state code -> {postal prefix: zone} for a
    state that spans zones (the longest matching prefix wins); postal_states: (low, high,
    state) ranges of the postal code's first len(low) characters, to find the state when
    the address names none; principal: the zone nearly everyone keeps, used when the
    address does not place the customer in a region of their own (None: no such zone)."""

    states: dict[str, tuple[str, ...]]
    split: dict[str, dict[str, str]] = field(default_factory=dict)
    postal_states: tuple[tuple[str, str, str], ...] = ()
    principal: str | None = None


_E, _C, _M, _P = "America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"

US = Regions(
    states={
        "AL": (_C, "Alabama"),
        "AK": ("America/Anchorage", "Alaska"),
        "AZ": ("America/Phoenix", "Arizona"),
        "AR": (_C, "Arkansas"),
        "CA": (_P, "California"),
        "CO": (_M, "Colorado"),
        "CT": (_E, "Connecticut"),
        "DE": (_E, "Delaware"),
        "DC": (_E, "District of Columbia", "Washington DC", "Washington D C"),
        "FL": (_E, "Florida"),
        "GA": (_E, "Georgia"),
        "HI": ("Pacific/Honolulu", "Hawaii"),
        "ID": ("America/Boise", "Idaho"),
        "IL": (_C, "Illinois"),
        "IN": ("America/Indiana/Indianapolis", "Indiana"),
        "IA": (_C, "Iowa"),
        "KS": (_C, "Kansas"),
        "KY": (_E, "Kentucky"),
        "LA": (_C, "Louisiana"),
        "ME": (_E, "Maine"),
        "MD": (_E, "Maryland"),
        "MA": (_E, "Massachusetts"),
        "MI": ("America/Detroit", "Michigan"),
        "MN": (_C, "Minnesota"),
        "MS": (_C, "Mississippi"),
        "MO": (_C, "Missouri"),
        "MT": (_M, "Montana"),
        "NE": (_C, "Nebraska"),
        "NV": (_P, "Nevada"),
        "NH": (_E, "New Hampshire"),
        "NJ": (_E, "New Jersey"),
        "NM": (_M, "New Mexico"),
        "NY": (_E, "New York"),
        "NC": (_E, "North Carolina"),
        "ND": (_C, "North Dakota"),
        "OH": (_E, "Ohio"),
        "OK": (_C, "Oklahoma"),
        "OR": (_P, "Oregon"),
        "PA": (_E, "Pennsylvania"),
        "RI": (_E, "Rhode Island"),
        "SC": (_E, "South Carolina"),
        "SD": (_C, "South Dakota"),
        "TN": (_C, "Tennessee"),
        "TX": (_C, "Texas"),
        "UT": (_M, "Utah"),
        "VT": (_E, "Vermont"),
        "VA": (_E, "Virginia"),
        "WA": (_P, "Washington"),
        "WV": (_E, "West Virginia"),
        "WI": (_C, "Wisconsin"),
        "WY": (_M, "Wyoming"),
        "PR": ("America/Puerto_Rico", "Puerto Rico"),
        "VI": ("America/St_Thomas", "Virgin Islands", "US Virgin Islands"),
        "GU": ("Pacific/Guam", "Guam"),
        "AS": ("Pacific/Pago_Pago", "American Samoa"),
        "MP": ("Pacific/Saipan", "Northern Mariana Islands"),
    },
    # By 3-digit ZIP prefix, where a prefix lies wholly (or nearly) on the other side.
    split={
        "AK": {"99546": "America/Adak", "99547": "America/Adak"},
        "FL": {"324": _C, "325": _C},  # the panhandle west of the Apalachicola
        "ID": {"835": _P, "838": _P},  # the panhandle
        "IN": {"463": _C, "464": _C, "476": _C, "477": _C},  # Gary, Evansville
        "KY": {"420": _C, "421": _C, "422": _C, "423": _C, "424": _C},  # the west
        "NE": {"693": _M},  # the panhandle
        "ND": {"586": _M},  # the southwest
        "OR": {"979": "America/Boise"},  # Malheur County
        "SD": {"577": _M},  # west river
        "TN": {"373": _E, "374": _E, "376": _E, "377": _E, "378": _E, "379": _E},  # the east
        "TX": {"798": _M, "799": _M},  # El Paso
    },
    postal_states=(
        ("005", "005", "NY"),
        ("006", "007", "PR"),
        ("008", "008", "VI"),
        ("009", "009", "PR"),
        ("010", "027", "MA"),
        ("028", "029", "RI"),
        ("030", "038", "NH"),
        ("039", "049", "ME"),
        ("050", "054", "VT"),
        ("055", "055", "MA"),
        ("056", "059", "VT"),
        ("060", "069", "CT"),
        ("070", "089", "NJ"),
        ("100", "149", "NY"),
        ("150", "196", "PA"),
        ("197", "199", "DE"),
        ("200", "200", "DC"),
        ("201", "201", "VA"),
        ("202", "205", "DC"),
        ("206", "219", "MD"),
        ("220", "246", "VA"),
        ("247", "268", "WV"),
        ("270", "289", "NC"),
        ("290", "299", "SC"),
        ("300", "319", "GA"),
        ("320", "339", "FL"),
        ("341", "349", "FL"),
        ("350", "369", "AL"),
        ("370", "385", "TN"),
        ("386", "397", "MS"),
        ("398", "399", "GA"),
        ("400", "427", "KY"),
        ("430", "459", "OH"),
        ("460", "479", "IN"),
        ("480", "499", "MI"),
        ("500", "528", "IA"),
        ("530", "549", "WI"),
        ("550", "567", "MN"),
        ("569", "569", "DC"),
        ("570", "577", "SD"),
        ("580", "588", "ND"),
        ("590", "599", "MT"),
        ("600", "629", "IL"),
        ("630", "658", "MO"),
        ("660", "679", "KS"),
        ("680", "693", "NE"),
        ("700", "714", "LA"),
        ("716", "729", "AR"),
        ("730", "731", "OK"),
        ("733", "733", "TX"),
        ("734", "749", "OK"),
        ("750", "799", "TX"),
        ("800", "816", "CO"),
        ("820", "831", "WY"),
        ("832", "838", "ID"),
        ("840", "847", "UT"),
        ("850", "865", "AZ"),
        ("870", "884", "NM"),
        ("885", "885", "TX"),
        ("889", "898", "NV"),
        ("900", "961", "CA"),
        ("967", "968", "HI"),
        ("969", "969", "GU"),
        ("970", "979", "OR"),
        ("980", "994", "WA"),
        ("995", "999", "AK"),
    ),
)

CA = Regions(
    states={
        "AB": ("America/Edmonton", "Alberta"),
        "BC": ("America/Vancouver", "British Columbia", "Colombie Britannique"),
        "MB": ("America/Winnipeg", "Manitoba"),
        "NB": ("America/Moncton", "New Brunswick", "Nouveau Brunswick"),
        "NL": ("America/St_Johns", "Newfoundland and Labrador", "Newfoundland", "Terre Neuve"),
        "NS": ("America/Halifax", "Nova Scotia", "Nouvelle Ecosse"),
        "NT": ("America/Yellowknife", "Northwest Territories", "Territoires du Nord Ouest"),
        "NU": ("America/Iqaluit", "Nunavut"),
        "ON": ("America/Toronto", "Ontario"),
        "PE": ("America/Halifax", "Prince Edward Island", "Ile du Prince Edouard"),
        "QC": ("America/Toronto", "Quebec", "PQ"),
        "SK": ("America/Regina", "Saskatchewan"),
        "YT": ("America/Whitehorse", "Yukon"),
    },
    # By forward sortation area (the postal code's first letters).
    split={
        "BC": {
            "V1C": "America/Edmonton",
            "V1G": "America/Dawson_Creek",
            "V1J": "America/Dawson_Creek",
        },
        "NL": {"A0P": "America/Goose_Bay", "A0R": "America/Goose_Bay"},  # Labrador
        "NU": {"X0B": "America/Cambridge_Bay", "X0C": "America/Rankin_Inlet"},
        "ON": {
            "P8": "America/Winnipeg",
            "P9": "America/Winnipeg",
            "P0V": "America/Winnipeg",
            "P0W": "America/Winnipeg",
        },
        "QC": {"G4T": "America/Halifax"},  # Magdalen Islands
        "SK": {"S9V": "America/Edmonton"},  # Lloydminster
    },
    postal_states=(
        ("A", "A", "NL"),
        ("B", "B", "NS"),
        ("C", "C", "PE"),
        ("E", "E", "NB"),
        ("G", "J", "QC"),
        ("K", "P", "ON"),
        ("R", "R", "MB"),
        ("S", "S", "SK"),
        ("T", "T", "AB"),
        ("V", "V", "BC"),
        ("X", "X", "NT"),
        ("X0A", "X0C", "NU"),
        ("Y", "Y", "YT"),
    ),
)

AU = Regions(
    states={
        "NSW": ("Australia/Sydney", "New South Wales"),
        "VIC": ("Australia/Melbourne", "Victoria"),
        "QLD": ("Australia/Brisbane", "Queensland"),
        "SA": ("Australia/Adelaide", "South Australia"),
        "WA": ("Australia/Perth", "Western Australia"),
        "TAS": ("Australia/Hobart", "Tasmania"),
        "NT": ("Australia/Darwin", "Northern Territory"),
        "ACT": ("Australia/Sydney", "Australian Capital Territory"),
        "JBT": ("Australia/Sydney", "Jervis Bay Territory"),
    },
    split={"NSW": {"2880": "Australia/Broken_Hill", "2898": "Australia/Lord_Howe"}},
    postal_states=(
        ("0", "0", "NT"),
        ("2", "2", "NSW"),
        ("3", "3", "VIC"),
        ("4", "4", "QLD"),
        ("5", "5", "SA"),
        ("6", "6", "WA"),
        ("7", "7", "TAS"),
        ("8", "8", "VIC"),
        ("9", "9", "QLD"),
    ),
)

_SP = "America/Sao_Paulo"
BR = Regions(
    states={
        "AC": ("America/Rio_Branco", "Acre"),
        "AL": ("America/Maceio", "Alagoas"),
        "AP": ("America/Belem", "Amapa"),
        "AM": ("America/Manaus", "Amazonas"),
        "BA": ("America/Bahia", "Bahia"),
        "CE": ("America/Fortaleza", "Ceara"),
        "DF": (_SP, "Distrito Federal", "Brasilia"),
        "ES": (_SP, "Espirito Santo"),
        "GO": (_SP, "Goias"),
        "MA": ("America/Fortaleza", "Maranhao"),
        "MT": ("America/Cuiaba", "Mato Grosso"),
        "MS": ("America/Campo_Grande", "Mato Grosso do Sul"),
        "MG": (_SP, "Minas Gerais"),
        "PA": ("America/Belem", "Para"),
        "PB": ("America/Fortaleza", "Paraiba"),
        "PR": (_SP, "Parana"),
        "PE": ("America/Recife", "Pernambuco"),
        "PI": ("America/Fortaleza", "Piaui"),
        "RJ": (_SP, "Rio de Janeiro"),
        "RN": ("America/Fortaleza", "Rio Grande do Norte"),
        "RS": (_SP, "Rio Grande do Sul"),
        "RO": ("America/Porto_Velho", "Rondonia"),
        "RR": ("America/Boa_Vista", "Roraima"),
        "SC": (_SP, "Santa Catarina"),
        "SP": (_SP, "Sao Paulo"),
        "SE": ("America/Maceio", "Sergipe"),
        "TO": ("America/Araguaina", "Tocantins"),
    },
    split={"PE": {"53990": "America/Noronha"}},  # Fernando de Noronha
    # By the CEP's first five digits.
    postal_states=(
        ("01000", "19999", "SP"),
        ("20000", "28999", "RJ"),
        ("29000", "29999", "ES"),
        ("30000", "39999", "MG"),
        ("40000", "48999", "BA"),
        ("49000", "49999", "SE"),
        ("50000", "56999", "PE"),
        ("57000", "57999", "AL"),
        ("58000", "58999", "PB"),
        ("59000", "59999", "RN"),
        ("60000", "63999", "CE"),
        ("64000", "64999", "PI"),
        ("65000", "65999", "MA"),
        ("66000", "68899", "PA"),
        ("68900", "68999", "AP"),
        ("69000", "69299", "AM"),
        ("69300", "69399", "RR"),
        ("69400", "69899", "AM"),
        ("69900", "69999", "AC"),
        ("70000", "72799", "DF"),
        ("72800", "72999", "GO"),
        ("73000", "73699", "DF"),
        ("73700", "76799", "GO"),
        ("76800", "76999", "RO"),
        ("77000", "77999", "TO"),
        ("78000", "78899", "MT"),
        ("79000", "79999", "MS"),
        ("80000", "87999", "PR"),
        ("88000", "89999", "SC"),
        ("90000", "99999", "RS"),
    ),
)

_MX = "America/Mexico_City"
MX = Regions(
    states={
        "AGU": (_MX, "Aguascalientes", "AGS"),
        "BCN": ("America/Tijuana", "Baja California", "BC"),
        "BCS": ("America/Mazatlan", "Baja California Sur"),
        "CAM": ("America/Merida", "Campeche"),
        "CHP": (_MX, "Chiapas", "CHIS"),
        "CHH": ("America/Chihuahua", "Chihuahua", "CHIH"),
        "CMX": (_MX, "Ciudad de Mexico", "CDMX", "Mexico City", "Distrito Federal", "DF"),
        "COA": ("America/Monterrey", "Coahuila", "Coahuila de Zaragoza", "COAH"),
        "COL": (_MX, "Colima"),
        "DUR": ("America/Monterrey", "Durango", "DGO"),
        "GUA": (_MX, "Guanajuato", "GTO"),
        "GRO": (_MX, "Guerrero"),
        "HID": (_MX, "Hidalgo", "HGO"),
        "JAL": (_MX, "Jalisco"),
        "MEX": (_MX, "Mexico", "Estado de Mexico", "EDOMEX", "MEX"),
        "MIC": (_MX, "Michoacan", "Michoacan de Ocampo", "MICH"),
        "MOR": (_MX, "Morelos"),
        "NAY": ("America/Mazatlan", "Nayarit"),
        "NLE": ("America/Monterrey", "Nuevo Leon", "NL"),
        "OAX": (_MX, "Oaxaca"),
        "PUE": (_MX, "Puebla"),
        "QUE": (_MX, "Queretaro", "QRO"),
        "ROO": ("America/Cancun", "Quintana Roo", "Q Roo", "QROO"),
        "SLP": (_MX, "San Luis Potosi"),
        "SIN": ("America/Mazatlan", "Sinaloa"),
        "SON": ("America/Hermosillo", "Sonora"),
        "TAB": (_MX, "Tabasco"),
        "TAM": ("America/Monterrey", "Tamaulipas", "TAMPS"),
        "TLA": (_MX, "Tlaxcala", "TLAX"),
        "VER": (_MX, "Veracruz", "Veracruz de Ignacio de la Llave"),
        "YUC": ("America/Merida", "Yucatan"),
        "ZAC": (_MX, "Zacatecas"),
    },
    # By código postal: the border cities that keep US daylight saving time.
    split={
        "CHH": {"32": "America/Ciudad_Juarez"},
        "COA": {"260": "America/Matamoros", "262": "America/Matamoros"},
        "NAY": {"6373": "America/Bahia_Banderas"},
        "TAM": {
            p: "America/Matamoros"
            for p in ("873", "874", "875", "880", "881", "882", "885", "886", "887")
        },
    },
    postal_states=(
        ("01", "16", "CMX"),
        ("20", "20", "AGU"),
        ("21", "22", "BCN"),
        ("23", "23", "BCS"),
        ("24", "24", "CAM"),
        ("25", "27", "COA"),
        ("28", "28", "COL"),
        ("29", "30", "CHP"),
        ("31", "33", "CHH"),
        ("34", "35", "DUR"),
        ("36", "38", "GUA"),
        ("39", "41", "GRO"),
        ("42", "43", "HID"),
        ("44", "49", "JAL"),
        ("50", "57", "MEX"),
        ("58", "61", "MIC"),
        ("62", "62", "MOR"),
        ("63", "63", "NAY"),
        ("64", "67", "NLE"),
        ("68", "71", "OAX"),
        ("72", "75", "PUE"),
        ("76", "76", "QUE"),
        ("77", "77", "ROO"),
        ("78", "79", "SLP"),
        ("80", "82", "SIN"),
        ("83", "85", "SON"),
        ("86", "86", "TAB"),
        ("87", "89", "TAM"),
        ("90", "90", "TLA"),
        ("91", "96", "VER"),
        ("97", "97", "YUC"),
        ("98", "99", "ZAC"),
    ),
)

_MSK, _YEK = "Europe/Moscow", "Asia/Yekaterinburg"
RU = Regions(
    states={
        "AD": (_MSK, "Adygea", "Adygeya"),
        "AL": ("Asia/Barnaul", "Altai Republic", "Altay Republic", "Gorno Altai"),
        "ALT": ("Asia/Barnaul", "Altai Krai", "Altay Krai", "Altai", "Altay"),
        "AMU": ("Asia/Yakutsk", "Amur"),
        "ARK": (_MSK, "Arkhangelsk"),
        "AST": ("Europe/Astrakhan", "Astrakhan"),
        "BA": (_YEK, "Bashkortostan", "Bashkiria"),
        "BEL": (_MSK, "Belgorod"),
        "BRY": (_MSK, "Bryansk"),
        "BU": ("Asia/Irkutsk", "Buryatia", "Buryatiya"),
        "CE": (_MSK, "Chechnya", "Chechen", "Chechen Republic"),
        "CHE": (_YEK, "Chelyabinsk"),
        "CHU": ("Asia/Anadyr", "Chukotka", "Chukotka Autonomous Okrug"),
        "CU": (_MSK, "Chuvashia", "Chuvash Republic"),
        "DA": (_MSK, "Dagestan"),
        "IN": (_MSK, "Ingushetia"),
        "IRK": ("Asia/Irkutsk", "Irkutsk"),
        "IVA": (_MSK, "Ivanovo"),
        "KB": (_MSK, "Kabardino Balkaria", "Kabardino Balkar Republic"),
        "KGD": ("Europe/Kaliningrad", "Kaliningrad"),
        "KL": (_MSK, "Kalmykia"),
        "KLU": (_MSK, "Kaluga"),
        "KAM": ("Asia/Kamchatka", "Kamchatka"),
        "KC": (_MSK, "Karachay Cherkessia", "Karachay Cherkess Republic"),
        "KR": (_MSK, "Karelia"),
        "KEM": ("Asia/Novokuznetsk", "Kemerovo", "Kuzbass"),
        "KHA": ("Asia/Vladivostok", "Khabarovsk"),
        "KK": ("Asia/Krasnoyarsk", "Khakassia", "Khakasia"),
        "KHM": (_YEK, "Khanty Mansi", "Khanty Mansiysk", "Yugra"),
        "KIR": ("Europe/Kirov", "Kirov"),
        "KO": (_MSK, "Komi"),
        "KOS": (_MSK, "Kostroma"),
        "KDA": (_MSK, "Krasnodar"),
        "KYA": ("Asia/Krasnoyarsk", "Krasnoyarsk"),
        "KGN": (_YEK, "Kurgan"),
        "KRS": (_MSK, "Kursk"),
        "LEN": (_MSK, "Leningrad"),
        "LIP": (_MSK, "Lipetsk"),
        "MAG": ("Asia/Magadan", "Magadan"),
        "ME": (_MSK, "Mari El"),
        "MO": (_MSK, "Mordovia"),
        "MOS": (_MSK, "Moscow Oblast", "Moskovskaya"),
        "MOW": (_MSK, "Moscow", "Moskva"),
        "MUR": (_MSK, "Murmansk"),
        "NEN": (_MSK, "Nenets"),
        "NIZ": (_MSK, "Nizhny Novgorod", "Nizhegorodskaya"),
        "NGR": (_MSK, "Novgorod"),
        "NVS": ("Asia/Novosibirsk", "Novosibirsk"),
        "OMS": ("Asia/Omsk", "Omsk"),
        "ORE": (_YEK, "Orenburg"),
        "ORL": (_MSK, "Oryol", "Orel"),
        "PNZ": (_MSK, "Penza"),
        "PER": (_YEK, "Perm"),
        "PRI": ("Asia/Vladivostok", "Primorsky", "Primorye"),
        "PSK": (_MSK, "Pskov"),
        "ROS": (_MSK, "Rostov"),
        "RYA": (_MSK, "Ryazan"),
        "SA": ("Asia/Yakutsk", "Sakha", "Yakutia", "Sakha Yakutia"),
        "SAK": ("Asia/Sakhalin", "Sakhalin"),
        "SAM": ("Europe/Samara", "Samara"),
        "SPE": (_MSK, "Saint Petersburg", "St Petersburg", "Sankt Peterburg"),
        "SAR": ("Europe/Saratov", "Saratov"),
        "SE": (_MSK, "North Ossetia", "North Ossetia Alania"),
        "SMO": (_MSK, "Smolensk"),
        "STA": (_MSK, "Stavropol"),
        "SVE": (_YEK, "Sverdlovsk"),
        "TAM": (_MSK, "Tambov"),
        "TA": (_MSK, "Tatarstan"),
        "TOM": ("Asia/Tomsk", "Tomsk"),
        "TUL": (_MSK, "Tula"),
        "TVE": (_MSK, "Tver"),
        "TYU": (_YEK, "Tyumen"),
        "TY": ("Asia/Krasnoyarsk", "Tuva", "Tyva"),
        "UD": ("Europe/Samara", "Udmurtia", "Udmurt Republic"),
        "ULY": ("Europe/Ulyanovsk", "Ulyanovsk"),
        "VLA": (_MSK, "Vladimir"),
        "VGG": ("Europe/Volgograd", "Volgograd"),
        "VLG": (_MSK, "Vologda"),
        "VOR": (_MSK, "Voronezh"),
        "YAN": (_YEK, "Yamalo Nenets", "Yamal"),
        "YAR": (_MSK, "Yaroslavl"),
        "YEV": ("Asia/Vladivostok", "Jewish Autonomous Oblast", "Jewish"),
        "ZAB": ("Asia/Chita", "Zabaykalsky", "Zabaykalsky Krai", "Transbaikal"),
    },
)

# Countries with a remote region of their own time; everyone else keeps the principal zone.
ES = Regions(
    states={
        "CN": ("Atlantic/Canary", "Canarias", "Canary Islands", "Islas Canarias"),
        "GC": ("Atlantic/Canary", "Las Palmas"),
        "TF": ("Atlantic/Canary", "Santa Cruz de Tenerife", "Tenerife"),
    },
    postal_states=(("35", "35", "GC"), ("38", "38", "TF")),
    principal="Europe/Madrid",
)
PT = Regions(
    states={"20": ("Atlantic/Azores", "Acores", "Azores", "Regiao Autonoma dos Acores")},
    postal_states=(("95", "99", "20"),),
    principal="Europe/Lisbon",
)
NZ = Regions(
    states={"CIT": ("Pacific/Chatham", "Chatham Islands", "Chatham Islands Territory")},
    postal_states=(("8942", "8942", "CIT"),),
    principal="Pacific/Auckland",
)
EC = Regions(
    states={"W": ("Pacific/Galapagos", "Galapagos")},
    postal_states=(("20", "20", "W"),),
    principal="America/Guayaquil",
)
CL = Regions(
    states={
        "MA": ("America/Punta_Arenas", "Magallanes", "Magallanes y de la Antartica Chilena"),
        "AI": ("America/Coyhaique", "Aysen", "Aisen", "Aysen del General Carlos Ibanez del Campo"),
        "VS": ("America/Santiago", "Valparaiso"),
    },
    split={"VS": {"2770": "Pacific/Easter"}},  # Isla de Pascua
    principal="America/Santiago",
)
UA = Regions(
    states={
        "43": ("Europe/Simferopol", "Crimea", "Krym", "Autonomous Republic of Crimea"),
        "40": ("Europe/Simferopol", "Sevastopol"),
    },
    principal="Europe/Kyiv",
)
CN = Regions(states={}, principal="Asia/Shanghai")  # one official time (Beijing)

REGIONS: dict[str, Regions] = {
    "US": US,
    "CA": CA,
    "AU": AU,
    "BR": BR,
    "MX": MX,
    "RU": RU,
    "ES": ES,
    "PT": PT,
    "NZ": NZ,
    "EC": EC,
    "CL": CL,
    "UA": UA,
    "CN": CN,
}

# Words that say what kind of region a name is, not which one ("Amur Oblast", "Estado
# de México"): left out of names on both sides of the comparison.
_KIND_WORDS = frozenset(
    "oblast krai kray republic respublika autonomous okrug ao region province provincia "
    "state estado territory of the de do da del dos".split()
)


def _name_key(value: str) -> str:
    decomposed = unicodedata.normalize("NFKD", value)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    words = "".join(c if c.isalnum() else " " for c in plain).split()
    return " ".join(w for w in words if w not in _KIND_WORDS) or " ".join(words)


@functools.cache
def _state_index(country: str) -> dict[str, str]:
    regions = REGIONS[country]
    index: dict[str, str] = {}
    for code, (_zone, *names) in regions.states.items():
        for name in (code, *names):
            index.setdefault(_name_key(name), code)
    return index


def _state_code(country: str, state: str) -> str | None:
    value = state.strip()
    if not value:
        return None
    prefix = f"{country}-"
    if value.upper().startswith(prefix):  # ISO 3166-2 ("US-CA", "RU-MOW")
        value = value[len(prefix) :]
    return _state_index(country).get(_name_key(value))


def _postal(value: str) -> str:
    return "".join(c for c in (value or "").upper() if c.isalnum())


def _longest_prefix(postal: str, table: dict[str, str]) -> str | None:
    for n in range(len(postal), 0, -1):
        if postal[:n] in table:
            return table[postal[:n]]
    return None


def _postal_state(regions: Regions, postal: str) -> str | None:
    found = None
    for low, high, state in regions.postal_states:
        head = postal[: len(low)]
        if len(head) == len(low) and low <= head <= high:
            found = state  # later, narrower ranges win (X0A-X0C is Nunavut, X the NWT)
    return found


def address_zone(*, country: str, state: str = "", postal_code: str = "") -> str | None:
    """The zone a billing address is in, or None when it does not say."""
    country = (country or "").strip().upper()
    regions = REGIONS.get(country)
    if regions is None:
        return country_zone(country)
    postal = _postal(postal_code)
    code = _state_code(country, state or "")
    if code is None and postal:
        code = _postal_state(regions, postal)
    if code is None:
        return regions.principal
    split = regions.split.get(code, {})
    return (_longest_prefix(postal, split) if postal else None) or regions.states[code][0]


def card_country_zone(country: str) -> str | None:
    """The zone of the card's issuing country, only where that country has one time: a
    card says where the bank is, not where in a large country its holder lives."""
    return country_zone(country)


# ------------------------------------------------------------------ deciding the zone


@dataclass(frozen=True)
class ZoneGuess:
    zone: str  # "" with source STORE: the store's zone, whatever it is at the time
    source: str


def metadata_zone(metadata, key: str) -> str | None:
    if not isinstance(metadata, dict) or not key:
        return None
    return zone_valid(metadata.get(key))


def time_zone_guess(
    *,
    metadata: dict | None,
    key: str,
    country: str = "",
    state: str = "",
    postal_code: str = "",
    card_country: str = "",
) -> ZoneGuess:
    """The customer's zone from what Stripe says of them, best source first."""
    zone = metadata_zone(metadata, key)
    if zone:
        return ZoneGuess(zone, METADATA)
    zone = address_zone(country=country, state=state, postal_code=postal_code) if country else None
    if zone:
        return ZoneGuess(zone, ADDRESS)
    zone = card_country_zone(card_country) if card_country else None
    if zone:
        return ZoneGuess(zone, CARD_COUNTRY)
    return ZoneGuess("", STORE)


def time_zone_decide(
    *,
    current: ZoneGuess,
    guess: ZoneGuess,
    metadata_news: bool,
    at: dt.datetime | None = None,
    current_at: dt.datetime | None = None,
) -> ZoneGuess:
    """What the customer's zone becomes, given what it is and what Stripe now says.

    A zone the merchant set through our API stands against anything derived, and against
    the metadata unless the metadata's zone itself changed after it was set
    (`metadata_news`, as of `at`). A derived guess replaces a metadata zone only when the
    metadata no longer names one."""
    if current.source == API:
        newer = current_at is None or at is None or at > current_at
        if guess.source == METADATA and metadata_news and newer:
            return guess
        return current
    return guess


# ------------------------------------------------------------------ consent, phone, locale

_YES = frozenset({"true", "yes", "1"})
_NO = frozenset({"false", "no", "0"})


def sms_consent_value(value) -> bool | None:
    """A consent flag as merchants write it in metadata: true/yes/1 or false/no/0, in any
    case; None for anything else (absent, empty, "maybe")."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str | int):
        return None
    text = str(value).strip().casefold()
    if text in _YES:
        return True
    if text in _NO:
        return False
    return None


def metadata_news(*, key: str, metadata: dict | None, previous: dict | None) -> bool:
    """Whether an event brings news of metadata[key]: a created customer, an update whose
    `previous_attributes` we do not have, or one whose metadata changed that key."""
    if previous is None:
        return True
    before = previous.get("metadata")
    if not isinstance(before, dict) or key not in before:
        return False
    return before.get(key) != (metadata or {}).get(key)


def phone_e164(raw, *, region: str | None = None) -> str:
    """A phone number in E.164 (+4915112345678), read with libphonenumber; `region` is
    the country a number without its +code is dialled in. "" for what is not a valid
    number (a typo, a bare extension, "n/a")."""
    if not isinstance(raw, str) or not raw.strip():
        return ""
    try:
        number = phonenumbers.parse(raw, (region or "").upper() or None)
    except phonenumbers.NumberParseException:
        return ""
    if not phonenumbers.is_valid_number(number):
        return ""
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def locale_from_stripe(preferred_locales) -> str | None:
    """The customer's first preferred locale as Stripe lists them ("fr-CA"), or None."""
    if not isinstance(preferred_locales, list | tuple):
        return None
    for value in preferred_locales:
        if isinstance(value, str) and value.strip():
            return value.strip().replace("_", "-")[:16]
    return None
