"""Turn upstream rows into zhlora's normalized records (see ``zhlora.data.records``).

One function per upstream format. Each checks what it reads and raises a
:class:`~zhlora.errors.DataError` naming the file and line (or row) of the first bad input,
so that wrong data never turns into silently wrong numbers.

Item ids are stable across runs and sources (hub or local give the same ids):

- C-Eval ``<subject>-<split>-<id column>``; CMMLU ``<subject>-<split>-<index column>``;
- MMLU ``<subject>-<split>-<n>`` with ``n`` the 0-based position of the row within its
  subject's file (the hub's Parquet keeps the same order);
- GSM8K ``gsm8k-<split>-<n>`` with ``n`` the 0-based position in the split's file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from zhlora.data.readers import read_csv_rows
from zhlora.data.records import ANSWER_LETTERS, ChoiceQuestion, Instruction, MathProblem, TextDocument
from zhlora.errors import DataError

# Column layouts of the release CSVs (docs/data.md). C-Eval test has no answer column in the
# original release; dev adds the explanation used by chain-of-thought prompts.
CEVAL_HEADERS = (
    ["id", "question", "A", "B", "C", "D"],
    ["id", "question", "A", "B", "C", "D", "answer"],
    ["id", "question", "A", "B", "C", "D", "answer", "explanation"],
)
CMMLU_HEADER = ["", "Question", "A", "B", "C", "D", "Answer"]
MMLU_COLUMNS = 6  # headerless: question, A, B, C, D, answer letter

_GSM8K_ANSWER = re.compile(r"#### (\-?[0-9\.\,]+)")
# A top-level WikiText heading line: " = Title = " (subsections are " = = Sub = = ").
_WIKITEXT_TITLE = re.compile(r"^ ?= (?!=)(.*?) = ?$")


def _answer_letter(value: str, where: str) -> str:
    letter = value.strip()
    if letter not in ANSWER_LETTERS:
        raise DataError(
            f'{where}: answer "{value}" is not one of A, B, C, D. Fix the row or re-download the benchmark.'
        )
    return letter


def _check_width(fields: list[str], width: int, columns: str, where: str) -> None:
    if len(fields) != width:
        raise DataError(
            f"{where}: expected {width} columns ({columns}), found {len(fields)}. The row is ragged or the "
            "file is not the upstream release; fix it or re-download the benchmark (download-data --force)."
        )


def ceval_questions(path: str | Path, subject: str, split: str) -> list[ChoiceQuestion]:
    """Read one C-Eval CSV (``<subject>_<split>.csv``); test rows without answers get ``answer=None``."""
    path = Path(path)
    rows = read_csv_rows(path)
    header_line, header = rows[0]
    if header not in CEVAL_HEADERS:
        raise DataError(
            f"{path}, line {header_line}: unexpected header {','.join(header)}; a C-Eval file starts with "
            f"{','.join(CEVAL_HEADERS[1])} (dev adds explanation; test may lack answer)."
        )
    has_answer = "answer" in header
    if split != "test" and not has_answer:
        raise DataError(f"{path}: the {split} split needs an answer column (header {','.join(header)}).")
    questions = []
    for line, fields in rows[1:]:
        where = f"{path}, line {line}"
        _check_width(fields, len(header), ",".join(header), where)
        row = dict(zip(header, fields))
        if not row["id"].strip():
            raise DataError(f"{where}: empty id. Fix the row or re-download the benchmark.")
        answer = row.get("answer", "")
        if split == "test" and not answer.strip():
            letter = None
        else:
            letter = _answer_letter(answer, where)
        questions.append(
            ChoiceQuestion(
                id=f"{subject}-{split}-{row['id'].strip()}",
                subject=subject,
                question=row["question"],
                choices=[row["A"], row["B"], row["C"], row["D"]],
                answer=letter,
                explanation=row.get("explanation"),
            )
        )
    return questions


def cmmlu_questions(path: str | Path, subject: str, split: str) -> list[ChoiceQuestion]:
    """Read one CMMLU CSV (``<split>/<subject>.csv``, header ``,Question,A,B,C,D,Answer``)."""
    path = Path(path)
    rows = read_csv_rows(path)
    header_line, header = rows[0]
    if header != CMMLU_HEADER:
        raise DataError(
            f"{path}, line {header_line}: unexpected header {','.join(header)}; a CMMLU file starts with "
            f"{','.join(CMMLU_HEADER)} (the first column is an unnamed row index)."
        )
    questions = []
    for line, fields in rows[1:]:
        where = f"{path}, line {line}"
        _check_width(fields, len(CMMLU_HEADER), "index,Question,A,B,C,D,Answer", where)
        index, question, a, b, c, d, answer = fields
        if not index.strip().isdigit():
            raise DataError(f'{where}: the first column must be the row index, got "{index}".')
        questions.append(
            ChoiceQuestion(
                id=f"{subject}-{split}-{int(index)}",
                subject=subject,
                question=question,
                choices=[a, b, c, d],
                answer=_answer_letter(answer, where),
            )
        )
    return questions


def mmlu_questions(path: str | Path, subject: str, split: str) -> list[ChoiceQuestion]:
    """Read one headerless MMLU CSV (``question,A,B,C,D,answer``) from the authors' archive."""
    path = Path(path)
    questions = []
    for number, (line, fields) in enumerate(read_csv_rows(path)):
        where = f"{path}, line {line}"
        _check_width(fields, MMLU_COLUMNS, "question,A,B,C,D,answer; MMLU files have no header", where)
        question, a, b, c, d, answer = fields
        questions.append(
            ChoiceQuestion(
                id=f"{subject}-{split}-{number}",
                subject=subject,
                question=question,
                choices=[a, b, c, d],
                answer=_answer_letter(answer, where),
            )
        )
    return questions


def mmlu_question_from_hub_row(where: str, row: dict[str, Any], split: str, number: int) -> ChoiceQuestion:
    """Convert one row of the hub's ``cais/mmlu`` Parquet (question, subject, choices[4], answer 0-3).

    ``number`` is the row's 0-based position among the rows of the same subject.
    """
    choices = row["choices"]
    if not isinstance(choices, list) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: `choices` must be a list of 4 strings, got {choices!r}.")
    answer = row["answer"]
    if not isinstance(answer, int) or not 0 <= answer <= 3:
        raise DataError(f"{where}: `answer` must be an integer 0-3 (A-D), got {answer!r}.")
    if not isinstance(row["question"], str) or not isinstance(row["subject"], str) or not row["subject"]:
        raise DataError(f"{where}: `question` and `subject` must be non-empty strings.")
    return ChoiceQuestion(
        id=f"{row['subject']}-{split}-{number}",
        subject=row["subject"],
        question=row["question"],
        choices=list(choices),
        answer=ANSWER_LETTERS[answer],
    )


def gsm8k_answer_number(answer_text: str) -> str | None:
    """The final answer of a GSM8K solution (the number after ``#### ``, commas removed), or None.

    This is the official extraction of openai/grade-school-math (``dataset.py``).
    """
    match = _GSM8K_ANSWER.search(answer_text)
    return match.group(1).strip().replace(",", "") if match else None


def gsm8k_problem(where: str, row: dict[str, Any], split: str, number: int) -> MathProblem:
    """Convert one GSM8K row ``{"question", "answer"}`` (JSON line or hub Parquet row)."""
    question, answer = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str):
        raise DataError(f'{where}: a GSM8K row needs string fields "question" and "answer", got keys {sorted(row)}.')
    number_text = gsm8k_answer_number(answer)
    if number_text is None:
        raise DataError(f'{where}: the answer does not end with "#### <number>" (GSM8K format).')
    return MathProblem(id=f"gsm8k-{split}-{number}", question=question, answer_text=answer, answer_number=number_text)


def instruction_from_row(where: str, row: dict[str, Any], fix_literal_newlines: bool = False) -> Instruction:
    """Convert one instruction row ``{"instruction", "input"?, "output"}`` (BELLE, alpaca).

    ``fix_literal_newlines`` turns the two characters backslash-n into a newline in the
    instruction and input: BELLE rows carry such escaped newlines
    ("...闰年。\\\\n\\n\\\\n1996\\\\n"). Outputs are left alone, since they may hold code.
    Surrounding whitespace is stripped from all three fields.
    """
    instruction, input_, output = row.get("instruction"), row.get("input", ""), row.get("output")
    if input_ is None:
        input_ = ""
    for key, value in (("instruction", instruction), ("input", input_), ("output", output)):
        if not isinstance(value, str):
            raise DataError(
                f'{where}: field "{key}" must be a string, got {type(value).__name__}. An instruction row is '
                '{"instruction": ..., "input": ..., "output": ...}.'
            )
    if fix_literal_newlines:
        instruction = instruction.replace("\\n", "\n")
        input_ = input_.replace("\\n", "\n")
    return Instruction(instruction=instruction.strip(), input=input_.strip(), output=output.strip())


def split_wikitext_articles(text: str) -> list[TextDocument]:
    """Split WikiText into one document per article (top-level `` = Title = `` headings).

    Text without any such heading is one document. Whitespace-only documents are dropped.
    The title goes to ``meta["title"]``.
    """
    documents: list[TextDocument] = []
    title: str | None = None
    lines: list[str] = []

    def flush() -> None:
        body = "".join(lines).strip()
        if body:
            documents.append(TextDocument(text=body, meta={"title": title} if title else {}))

    for line in text.splitlines(keepends=True):
        match = _WIKITEXT_TITLE.match(line.rstrip("\r\n"))
        if match:
            flush()
            title, lines = match.group(1).strip(), [line]
        else:
            lines.append(line)
    flush()
    return documents
