"""A tiny team-handbook corpus for the chat, feedback and answer-level tests.

Some questions name a page by team jargon that never occurs in its text ("a bluebird" is a failed
nightly build), so plain retrieval finds the wrong pages (bluebirds, the birds) and only a Deep
Memory model trained on earlier questions, or on feedback, finds the right one.
"""

from __future__ import annotations

from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import TextNode

from llama_index_deepmemory import DeepMemoryVectorStore

PAGES: dict[str, str] = {
    "build": "Recovering a failed nightly build: open the CI dashboard and find the red pipeline. "
             "Click rerun on the failed stage. Notify the release channel once it is green.",
    "birds1": "Bluebirds are small thrushes of North America. The eastern bluebird has a bright blue back and a rusty red breast.",
    "birds2": "To attract bluebirds to your garden, put up a nest box on a pole facing an open field. Offer them mealworms.",
    "birds3": "Songbirds such as robins and bluebirds migrate south in autumn. They return in early spring.",
    "birds4": "A sick bird in the garden may sit fluffed up. Call a wildlife rescue rather than handling it yourself.",
    "bread": "To bake sourdough bread, feed the starter the night before. Mix flour and water, and proof the dough for twelve hours.",
    "coffee": "Espresso needs finely ground coffee and water at about 93 degrees. Brew at nine bars of pressure for 25 seconds.",
    "git": "To undo the last git commit but keep the changes, run git reset --soft HEAD~1. "
           "To undo a pushed commit, run git revert with its hash.",
    "tax": "File the annual tax return before April 15. Attach the W-2 forms from every employer.",
    "bike": "To fix a flat bicycle tire, remove the wheel and find the puncture. Patch the tube and pump it up.",
    "vacation": "Request vacation days in the HR portal at least two weeks in advance. Your manager approves them.",
    "laptop": "If your laptop will not boot, hold the power button for ten seconds. Then try safe mode.",
    "vpn": "Connect to the office VPN with the client app. Sign in with your single sign-on account and a one-time code.",
    "printer": "When the printer jams, open the rear tray and remove the stuck paper slowly. Restart the print job.",
    "deploy": "Production deploys happen on Tuesdays. Tag the release, wait for staging checks, then press promote.",
    "oncall": "The on-call engineer answers pages within fifteen minutes. Afterwards they write an incident report.",
}

# jargon questions: page -> (training questions, held-out questions)
JARGON: dict[str, tuple[list[str], list[str]]] = {
    "build": (["What do I do about a bluebird?", "We got a bluebird last night, how do I fix it?",
               "how to recover from a bluebird", "steps after a bluebird happens"],
              ["How can I get rid of the bluebird we had overnight?"]),
    "deploy": (["when can I do a shipwright?", "how does a shipwright work?", "who presses the button in a shipwright?",
                "what are the steps of a shipwright"],
               ["Which weekday is shipwright day?"]),
    "vpn": (["how do I open the tunnelfox?", "tunnelfox login steps", "I can't get into the tunnelfox",
             "what account does the tunnelfox use?"],
            ["How do I sign in to tunnelfox from home?"]),
    "oncall": (["what does the pager owl do?", "how fast must the pager owl respond?",
                "what does the pager owl write afterwards?", "who is the pager owl this week and what is the job"],
               ["What are the duties of the pager owl?"]),
}


def nodes() -> list[TextNode]:
    return [TextNode(id_=node_id, text=text) for node_id, text in PAGES.items()]


def build_index(embed_model) -> tuple[DeepMemoryVectorStore, VectorStoreIndex]:
    store = DeepMemoryVectorStore(embed_model=embed_model)
    index = VectorStoreIndex(nodes(), storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed_model)
    return store, index


def top_ids(index: VectorStoreIndex, question: str, k: int, deep_memory: bool) -> list[str]:
    retriever = index.as_retriever(similarity_top_k=k, vector_store_kwargs={"deep_memory": deep_memory})
    return [scored.node.node_id for scored in retriever.retrieve(question)]
