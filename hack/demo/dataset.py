"""The demo's support-chat dataset: intents with paraphrased questions, and held-out paraphrases to test on.

Why this shape: a demo that tests on copies of its training records measures memorisation (the earlier demo had
six answers, its test split was the same questions again, test loss 0.010, and the tuned model still answered a
parcel question with the refund answer). Here every intent has one answer the shop gives and several ways of
asking for it; the paraphrases of each intent are divided once, by hand, into those that train and those held
out (validation and test), so the held-out questions use wording the model never saw, for the same intents.
The files are explicit (`dataset.validation`, `dataset.test`): nothing is re-split at random.

Deterministic: no randomness but `random.Random(seed)` over fixed lists, so the same seed gives the same bytes
(the e2e test and `make demo` upload what `seed.py` builds from here). `check_held_out` refuses a dataset where a
held-out question, normalised (case, punctuation, the greetings and closings training adds), is also a training
question, or shares most of its words with one (`NEAR_LIMIT`).

Run it to write the three files somewhere to read: `python hack/demo/dataset.py --out /tmp/support`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYSTEM = "You are the support assistant of an online shop. Answer briefly."


@dataclass(frozen=True)
class Intent:
    """One thing a customer asks for: the shop's answer, the training questions and the held-out ones.

    Answers that share a template ("Open Settings, choose ...") start with what they answer ("To cancel your
    plan, ..."): a small model that begins an answer by a shared template fills it in from another intent
    (measured: "Open Settings, choose Profile and press Upgrade" for a new e-mail; docs/demo.md)."""

    topic: str
    name: str
    answer: str
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]


INTENTS: tuple[Intent, ...] = (
    # account
    Intent(
        "account",
        "reset-password",
        "To reset your password, open Settings, choose Security, then Reset password. The emailed link works "
        "for one hour.",
        (
            "How do I reset my password?",
            "I forgot my password.",
            "My password does not work anymore.",
            "What do I do if I can't remember my password?",
            "I need a new password for my account.",
            "Password forgotten, how do I get back in?",
            "Which button gives me a new password?",
            "Sign-in keeps failing with my old password, help.",
            "I can't remember my login password.",
            "How does the password reset work?",
            "My password got lost, what now?",
            "Send me a password reset link.",
        ),
        ("Can you help me set a fresh password?", "I keep typing the wrong password and can't sign in."),
        ("I lost my password and cannot log in. What should I do?", "How can I recover a forgotten password?"),
    ),
    Intent(
        "account",
        "change-email",
        "To change your email, open Settings, choose Profile and edit Email. We send a code to the new "
        "address to confirm it.",
        (
            "How do I change my email address?",
            "I want to use a different email for my account.",
            "My email address is outdated, how do I update it?",
            "Can I switch the email I log in with?",
            "I have a new email, where do I change it?",
            "How can I update the email on my profile?",
            "Can I change the e-mail address on file?",
            "I have a new inbox, how do I move my account to it?",
            "Where is the setting for my email address?",
            "Please change my account email.",
            "How do I replace my login email with a new one?",
            "My account still has my old email address.",
        ),
        ("The mail address on my account is old, can I replace it?", "Where do I edit my email?"),
        ("I no longer use that mailbox, how do I put my new one on the account?", "Can my account use another e-mail?"),
    ),
    Intent(
        "account",
        "delete-account",
        "To delete your account, open Settings, choose Privacy, then Delete account. Your data is erased "
        "within 30 days.",
        (
            "How do I delete my account?",
            "I want to close my account for good.",
            "Please remove my account and my data.",
            "Can I erase my profile?",
            "How can I get rid of my account?",
            "I don't want an account with you anymore.",
            "How do I remove my account permanently?",
            "I want all my personal data deleted.",
            "Can you close my profile and erase my details?",
            "Where do I delete my user account?",
            "Wipe my account, please.",
            "How long until my deleted account's data is gone?",
        ),
        ("What are the steps to remove my account?", "Delete everything you store about me."),
        ("I'd like my account and personal data wiped, how?", "How do I permanently shut down my profile?"),
    ),
    # shipping
    Intent(
        "shipping",
        "track-parcel",
        "To track your parcel, open Orders and press Track next to the order to follow it on the courier's map.",
        (
            "Where is my package?",
            "How can I track my order?",
            "Is there a tracking link for my delivery?",
            "I want to see where my shipment is.",
            "How do I follow my package?",
            "Can I check the status of my delivery?",
            "Where can I see my parcel's location?",
            "How do I find out where my order is?",
            "My parcel has not arrived, can I track it?",
            "Where is the tracking for my parcel?",
            "Can I follow the courier delivering my order?",
            "How do I know where my package is now?",
        ),
        ("Where is my order right now?", "Can I see my shipment on a map?"),
        ("My parcel still has not shown up, where can I follow it?", "Where can I check where my parcel is?"),
    ),
    Intent(
        "shipping",
        "delivery-time",
        "Standard shipping takes three to five working days; Express arrives the next working day.",
        (
            "How long does shipping take?",
            "When will my order arrive?",
            "How many days until my package gets here?",
            "How fast is delivery?",
            "What is the delivery time?",
            "Do you have faster shipping?",
            "What is the usual wait for a delivery?",
            "When does an order usually get to me?",
            "How quick is express shipping?",
            "How long will I wait for my parcel?",
            "Can I get my order by tomorrow?",
            "What are your delivery times?",
        ),
        ("How soon will I get my order?", "Is there an express option and how quick is it?"),
        ("If I order today, when does it reach me?", "How many days does standard delivery need?"),
    ),
    Intent(
        "shipping",
        "change-address",
        "The delivery address can be changed until the order ships: open Orders, pick the order and press "
        "Edit address.",
        (
            "How do I change the delivery address of my order?",
            "I put the wrong address on my order.",
            "Can I send my order to a different address?",
            "I moved, can I update the shipping address of my order?",
            "The address on my order is wrong.",
            "Can I fix a typo in my delivery address?",
            "I gave the wrong street for my order, can I fix it?",
            "Can I change where my parcel goes?",
            "My order should go to my office instead of my home.",
            "How do I edit the shipping address on an order?",
            "Can the order be delivered to another address?",
            "I need to update the delivery address before it ships.",
        ),
        ("Is it too late to change where my order is delivered?", "My order has an old address on it."),
        ("I need my order shipped somewhere else, is that possible?", "Can I correct the street on my order?"),
    ),
    # returns
    Intent(
        "returns",
        "refund",
        "Returns are free within 30 days. Open Orders, pick the order and press Return; the money arrives in "
        "five days.",
        (
            "How do I get a refund?",
            "I want my money back.",
            "Can I return my order for a refund?",
            "How do I send something back?",
            "What is your return policy?",
            "I don't like the item, can I return it?",
            "Can I get my money back for an order?",
            "How does returning an item work?",
            "I'd like to return something and get a refund.",
            "How long do I have for a return?",
            "When do I get my money after a return?",
            "Do returns cost anything?",
        ),
        ("Can I give back what I bought and get paid back?", "How many days do I have to return something?"),
        ("Is it possible to send an item back and be reimbursed?", "I changed my mind about a purchase, what now?"),
    ),
    Intent(
        "returns",
        "damaged-item",
        "Sorry about that! Send a photo from Orders, Report a problem, and we ship a replacement at no cost.",
        (
            "My item arrived broken.",
            "The product is damaged.",
            "What do I do if my order came damaged?",
            "The box was crushed and the item is broken.",
            "I received a faulty product.",
            "Something in my order is cracked.",
            "My order arrived damaged, what now?",
            "The item I received is broken.",
            "What if my product came smashed?",
            "Part of my order was broken in the box.",
            "I got a defective item.",
            "My parcel came with a broken product inside.",
        ),
        ("The thing I got does not work and looks smashed.", "My delivery arrived in pieces."),
        ("The glass I ordered came shattered, can you help?", "What happens if a product shows up defective?"),
    ),
    Intent(
        "returns",
        "exchange-size",
        "To exchange for another size, open Orders, pick the order and press Exchange; the new size ships at once.",
        (
            "Can I exchange my shoes for a bigger size?",
            "The shirt is too small, can I swap it?",
            "How do I exchange an item for another size?",
            "The jacket does not fit, can I get a smaller one?",
            "I ordered the wrong size.",
            "Can I swap my trousers for a different size?",
            "Can I exchange this for a different size?",
            "My shoes are too big, can I swap them?",
            "The size I ordered does not fit me.",
            "Can I trade my jeans for a bigger size?",
            "I need a smaller size of the shirt I bought.",
            "How do I swap an item for the right size?",
        ),
        ("These boots are too tight, can I trade them for a larger pair?", "Can I get the dress in a size up?"),
        ("The sweater I got is too big, can I have a smaller one instead?", "How can I switch to a different size?"),
    ),
    # payments
    Intent(
        "payments",
        "payment-methods",
        "We accept Visa, Mastercard, PayPal and bank transfer. Cash on delivery is not available.",
        (
            "What payment methods do you accept?",
            "Can I pay with PayPal?",
            "Do you take credit cards?",
            "Can I pay cash on delivery?",
            "Which cards can I use?",
            "How can I pay for my order?",
            "What can I pay with?",
            "Do you accept Visa?",
            "Can I pay by bank transfer?",
            "Is PayPal accepted?",
            "What cards do you take at checkout?",
            "Can I pay when the parcel arrives?",
        ),
        ("Is bank transfer an option for paying?", "What are the ways to pay?"),
        ("Can I use my Mastercard at checkout?", "Which options do I have to pay you?"),
    ),
    Intent(
        "payments",
        "invoice",
        "Your invoice is in Orders: pick the order and press Invoice to download a PDF receipt.",
        (
            "Where can I find my invoice?",
            "I need a receipt.",
            "Can you send me the bill?",
            "How do I download an invoice?",
            "I need an invoice for my company.",
            "Where is the receipt for my purchase?",
            "Where do I download my receipt?",
            "Can I get an invoice for my order?",
            "I need the PDF invoice for my purchase.",
            "How do I get a bill for my company?",
            "Where are my invoices?",
            "Can you give me a receipt for my order?",
        ),
        ("Can I get a PDF of my bill?", "My accountant needs the invoice, where is it?"),
        ("How do I get proof of purchase for my order?", "Where do I get the invoice of what I bought?"),
    ),
    Intent(
        "payments",
        "charged-twice",
        "A double charge is usually a card hold that disappears within three days. If not, reply with the order "
        "number.",
        (
            "I was charged twice.",
            "Why did you take my money two times?",
            "There are two payments for one order on my card.",
            "I see a double charge on my bank statement.",
            "You billed me twice for the same order.",
            "My card shows the same payment twice.",
            "My card was charged two times for one order.",
            "Why do I see two charges for the same order?",
            "I paid twice by mistake, can you check?",
            "There is a duplicate payment on my card.",
            "Why did my bank take the money twice?",
            "You charged me double.",
        ),
        ("Why was my card debited two times?", "The same amount was taken from my account twice."),
        ("I think I paid double for my order, what happened?", "My bank shows a duplicate charge from your shop."),
    ),
    # subscription
    Intent(
        "subscription",
        "cancel-plan",
        "To cancel your plan, open Settings, choose Plan, then Cancel. It stays active until the end of the month.",
        (
            "How do I cancel my subscription?",
            "I want to stop my plan.",
            "Please cancel my membership.",
            "How can I end my subscription?",
            "I don't want to be billed monthly anymore.",
            "Stop my subscription, please.",
            "How do I stop my subscription?",
            "I want to cancel my plan.",
            "I would like to stop being a member.",
            "Where is the cancel button for my plan?",
            "Please end my subscription.",
            "How do I quit my subscription?",
        ),
        ("I'd like to quit my plan.", "How do I end the monthly plan?"),
        ("How do I unsubscribe from the paid plan?", "Can I terminate my membership?"),
    ),
    Intent(
        "subscription",
        "upgrade-plan",
        "To upgrade your plan, open Settings, choose Plan and press Upgrade; the new price applies from your "
        "next bill.",
        (
            "How do I upgrade my plan?",
            "I want the premium subscription.",
            "Can I switch to a bigger plan?",
            "How do I get more features?",
            "I'd like to move up to the Pro plan.",
            "How can I change to a higher tier?",
            "Can I upgrade to Premium?",
            "How do I switch to a higher plan?",
            "I want a plan with more features.",
            "Can I move up from Basic?",
            "How do I upgrade my subscription?",
            "I'd like the Pro subscription instead of mine.",
        ),
        ("Can I go from Basic to Premium?", "I need a larger plan."),
        ("What do I do to move to a better plan?", "Can I upgrade my membership to Pro?"),
    ),
    Intent(
        "subscription",
        "pause-plan",
        "You can pause your plan for up to three months: open Settings, choose Plan, then Pause.",
        (
            "Can I pause my subscription?",
            "I'm travelling, can I put my plan on hold?",
            "How do I freeze my membership for a while?",
            "Can I stop paying for a few months without cancelling?",
            "I want to take a break from my plan.",
            "Is it possible to suspend my subscription?",
            "Can I put my subscription on hold?",
            "How do I pause my plan?",
            "I want to freeze my subscription for a month.",
            "Can my plan take a break while I travel?",
            "Is there a way to pause my membership?",
            "Can I suspend my plan for a while?",
        ),
        ("Can I hold my plan while I'm away?", "How long can I freeze my subscription?"),
        ("I'll be abroad for two months, can my plan wait?", "Can I temporarily halt my membership?"),
    ),
    # help
    Intent(
        "help",
        "contact-support",
        "Our support team answers chat and phone from 8:00 to 20:00, Monday to Saturday.",
        (
            "How can I talk to a human?",
            "What is your phone number?",
            "When is customer service open?",
            "I want to speak to an agent.",
            "What are your support hours?",
            "Can I call you?",
            "How do I reach customer support?",
            "When are your agents available?",
            "Can I speak to someone from support?",
            "What times is the support chat open?",
            "I'd like to call customer service.",
            "Can I talk to a real person?",
        ),
        ("Is there a person I can chat with?", "At what times can I reach support?"),
        ("Can I get a real person on the line?", "When can I phone your service team?"),
    ),
    Intent(
        "help",
        "discount-code",
        "Enter the code in the Discount field at checkout; one code per order, not on sale items.",
        (
            "How do I use a discount code?",
            "Where do I enter my coupon?",
            "My promo code does not work.",
            "Can I use two discount codes?",
            "Where does the voucher code go?",
            "How do I apply a coupon to my order?",
            "Where do I type my discount code?",
            "My coupon is not accepted.",
            "How do I redeem a promo code?",
            "Can I use a coupon on a sale item?",
            "Where do I put my voucher at checkout?",
            "Why doesn't my promo code work?",
        ),
        ("The coupon was rejected at checkout.", "Does a promo code work on sale items?"),
        ("I have a voucher, where do I type it in?", "Why won't my discount apply?"),
    ),
    Intent(
        "help",
        "gift-card",
        "Gift cards are sold in Shop, Gift cards, from 10 to 200 euros, and are valid for two years.",
        (
            "Do you sell gift cards?",
            "Can I buy a voucher as a present?",
            "How long is a gift card valid?",
            "I want to give someone a gift card.",
            "What amounts do gift cards come in?",
            "Where can I buy a gift card?",
            "Can I buy a gift card?",
            "How long do gift cards last?",
            "Do you have gift cards as presents?",
            "Are gift cards available in your shop?",
            "Where are gift cards sold?",
            "I want to buy a gift card for a friend.",
        ),
        ("Do gift cards expire?", "Can I get a present card for my friend?"),
        ("I'd like to offer a friend store credit, is that possible?", "How much can a gift card be worth?"),
    ),
)
"""Six topics, three intents each: each intent's answer, 12 training questions, 2 validation, 2 test."""

OPENINGS = ("", "Hi. ", "Hello, ", "Good morning! ", "Hey there. ", "Quick question: ")
CLOSINGS = ("", " Thanks.", " Thank you!", " Please help.")
COPIES = 1
"""Each training question appears this many times, with a random opening/closing pair. One: twelve distinct
questions an intent, each once, are the same 216 records and training cost as six twice under other greetings, and
with two epochs raised held-out exact match from 0.33 to 0.61 (docs/demo.md, "Tuning the training")."""
NEAR_LIMIT = 0.75
"""The word-set Jaccard similarity above which a held-out question counts as a copy of a training question."""

SHOWN = ("track-parcel", "reset-password", "refund", "charged-twice")
"""The intents whose first test question the demo prints (base and fine-tuned answers side by side)."""


def chat(question: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def build(seed: int = 42) -> dict[str, list[dict[str, Any]]]:
    """{"train", "validation", "test"}: chat records. Train: every training question COPIES times with
    different greetings, shuffled. Held-out splits: the plain questions, ordered by position then intent (the
    first len(INTENTS) test records ask every intent once)."""
    rng = random.Random(seed)
    pairs = [(o, c) for o in OPENINGS for c in CLOSINGS]
    train = []
    for intent in INTENTS:
        for question in intent.train:
            for opening, closing in rng.sample(pairs, COPIES):
                train.append(chat(f"{opening}{question}{closing}", intent.answer))
    rng.shuffle(train)

    def held(field: str) -> list[dict[str, Any]]:
        width = max(len(getattr(i, field)) for i in INTENTS)
        return [
            chat(getattr(i, field)[k], i.answer) for k in range(width) for i in INTENTS if k < len(getattr(i, field))
        ]

    data = {"train": train, "validation": held("validation"), "test": held("test")}
    check_held_out(data)
    return data


_AFFIXES = sorted({a.strip().lower() for a in OPENINGS + CLOSINGS if a.strip()}, key=len, reverse=True)


def normalise(question: str) -> str:
    """Lower case, the training greetings/closings removed, punctuation and extra spaces dropped."""
    text = question.strip().lower()
    for affix in _AFFIXES:
        if text.startswith(affix):
            text = text[len(affix) :]
        if text.endswith(affix):
            text = text[: -len(affix)]
    return " ".join(re.findall(r"[a-z0-9']+", text))


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the two normalised questions' word sets."""
    left, right = set(normalise(a).split()), set(normalise(b).split())
    return len(left & right) / len(left | right) if left | right else 1.0


def question(record: dict[str, Any]) -> str:
    return str(record["messages"][1]["content"])


def check_held_out(data: dict[str, list[dict[str, Any]]]) -> None:
    """Raise ValueError naming the question if a held-out question is, or nearly is, a training question."""
    trained = {question(r) for r in data["train"]}
    seen = {normalise(q) for q in trained}
    for split in ("validation", "test"):
        for record in data[split]:
            asked = question(record)
            if normalise(asked) in seen:
                raise ValueError(f"{split} question {asked!r} is also a training question (normalised)")
            nearest = max(trained, key=lambda q: similarity(asked, q))
            if similarity(asked, nearest) > NEAR_LIMIT:
                raise ValueError(f"{split} question {asked!r} nearly copies the training question {nearest!r}")
    tested = [normalise(question(r)) for r in data["validation"] + data["test"]]
    if len(set(tested)) != len(tested):
        raise ValueError("a question is both a validation and a test question")


def shown_questions() -> dict[str, tuple[str, str]]:
    """The questions the demo prints: intent name -> (its first test question, the shop's answer)."""
    by_name = {i.name: i for i in INTENTS}
    return {name: (by_name[name].test[0], by_name[name].answer) for name in SHOWN}


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder for train/validation/test.jsonl")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, records in build(args.seed).items():
        (args.out / f"{split}.jsonl").write_bytes(jsonl(records))
        print(f"{args.out / split}.jsonl: {len(records)} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
