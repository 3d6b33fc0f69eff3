"""Zawgyi detection for Burmese input, on real Zawgyi and Unicode text."""

from __future__ import annotations

import pytest

from p2paid.web.i18n import load_languages
from p2paid.web.zawgyi import (
    ZAWGYI_HINT,
    looks_like_zawgyi,
    zawgyi_fields,
    zawgyi_probability,
)

#: Article 1 of the Universal Declaration of Human Rights, in Unicode and as a Zawgyi
#: keyboard types it (the same words, the same glyphs on each phone's own font).
UDHR_UNICODE = ("လူတိုင်းသည် တူညီ လွတ်လပ်သော ဂုဏ်သိက္ခာဖြင့် လည်းကောင်း၊ တူညီ လွတ်လပ်သော "
                "အခွင့်အရေးများဖြင့် လည်းကောင်း၊ မွေးဖွားလာသူများ ဖြစ်သည်။")
UDHR_ZAWGYI = ("လူတိုင္းသည္ တူညီ လြတ္လပ္ေသာ ဂုဏ္သိကၡာျဖင့္ လည္းေကာင္း၊ တူညီ လြတ္လပ္ေသာ "
               "အခြင့္အေရးမ်ားျဖင့္ လည္းေကာင္း၊ ေမြးဖြားလာသူမ်ား ျဖစ္သည္။")

#: A post a member might type ("drinking water, 40 litres") in both encodings, and
#: phrases of myanmar-tools' own compatibility data (resources/compatibility.tsv).
ZAWGYI = [UDHR_ZAWGYI, "ေသာက္ေရ ၄၀ လီတာ", "ascii mixed with ဘဂၤလားေဒရွ္႕ zawgyi",
          "လူ႔အခြင့္ေရး", "ဖ်က္ဆီးတတ္သည့္ ရက္စက္ၾကမ္းၾကဳတ္ေသာ", "လည္းေကာင္း၊", "ခဲ့ေသာေၾကာင့္"]
UNICODE = [UDHR_UNICODE, "သောက်ရေ ၄၀ လီတာ", "ascii mixed with စင်္ကာပူမှာ unicode",
           "မျိုးရိုးဂုဏ်သိက္ခာနှင့်တကွ", "အခွင့်အရေးများကို", "အသိအမှတ်ပြုခြင်းသည်",
           "ထၢမ်တွပ်ႇ", "ဂလာန်ညးဒါန်လိက်", "တၢ်ကစီၣ်"]  # the last three: Shan, Mon, Karen


@pytest.mark.parametrize("text", ZAWGYI)
def test_zawgyi_is_recognised(text: str) -> None:
    assert looks_like_zawgyi(text) and zawgyi_probability(text) > 0.99


@pytest.mark.parametrize("text", UNICODE)
def test_unicode_burmese_and_other_myanmar_languages_are_not(text: str) -> None:
    assert not looks_like_zawgyi(text) and zawgyi_probability(text) < 0.01


@pytest.mark.parametrize("text", ["", "Drinking water, 40 litres", "مياه الشرب", "၄၀",
                                  "ဘာသာစကား", "အစားအစာ"])
def test_text_that_looks_the_same_either_way_is_never_flagged(text: str) -> None:
    """No Burmese, or only letters both encodings share: nothing to switch."""
    assert not looks_like_zawgyi(text)
    assert 0.0 <= zawgyi_probability(text) <= 1.0


def test_a_form_learns_which_fields_look_like_zawgyi() -> None:
    form = {"title": "ေသာက္ေရ", "details": UDHR_UNICODE, "location": UDHR_ZAWGYI, "unit": "l"}
    assert zawgyi_fields(form) == ["title", "location"]
    assert zawgyi_fields(form, ["details", "location", "absent"]) == ["location"]


def test_the_hint_is_translated_into_every_language() -> None:
    hints = {lang.tag: lang.translations.gettext(ZAWGYI_HINT) for lang in load_languages()}
    assert hints["en"] == ZAWGYI_HINT and "Unicode" in ZAWGYI_HINT
    assert len(set(hints.values())) == len(hints)  # none left in English
    assert "ယူနီကုဒ်" in hints["my"] and not looks_like_zawgyi(hints["my"])
