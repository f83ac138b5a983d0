"""Turning transcript files into tasks and artifacts in ``processing``.

Shared by ``artifactd enqueue`` and the demo. A file is read whole before
anything is written for it, and each file's rows commit together, so an
unreadable file enqueues nothing and a readable one enqueues all of itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psycopg

from shared.errors import TranscriptError
from shared.repository import NewTask, create_placeholder, create_task
from shared.transcript import Transcript, read_transcripts


@dataclass(frozen=True)
class Enqueued:
    task_id: str
    artifact_id: str
    name: str
    source: str
    language: str | None


@dataclass(frozen=True)
class FileError:
    path: Path
    reason: str


def enqueue_transcripts(
    conn: psycopg.Connection,
    transcripts: list[Transcript],
    artifact_type: str,
    *,
    repeat: int = 1,
    priority: int = 0,
    max_attempts: int = 5,
    batch_id: str | None = None,
) -> list[Enqueued]:
    """One task per transcript and ``repeat`` artifacts each, in one transaction."""
    done: list[Enqueued] = []
    with conn.transaction():
        for transcript in transcripts:
            task_id = create_task(
                conn,
                NewTask(
                    name=transcript.name,
                    transcript=transcript.text,
                    meeting_time=transcript.meeting_time,
                    language=transcript.language,
                    note_type=artifact_type,
                ),
            )
            for _ in range(repeat):
                row = create_placeholder(
                    conn,
                    task_id,
                    artifact_type,
                    priority=priority,
                    max_attempts=max_attempts,
                    batch_id=batch_id,
                )
                done.append(
                    Enqueued(
                        task_id,
                        row["id"],
                        transcript.name,
                        transcript.source,
                        transcript.language,
                    )
                )
    return done


def enqueue_files(
    conn: psycopg.Connection,
    paths: list[Path],
    artifact_type: str,
    *,
    repeat: int = 1,
    priority: int = 0,
    max_attempts: int = 5,
) -> tuple[list[Enqueued], list[FileError]]:
    """Enqueue each readable file; report the others with their reason."""
    enqueued: list[Enqueued] = []
    errors: list[FileError] = []
    for path in paths:
        try:
            transcripts = read_transcripts(path)
        except TranscriptError as exc:
            errors.append(FileError(path, exc.reason))
            continue
        enqueued.extend(
            enqueue_transcripts(
                conn,
                transcripts,
                artifact_type,
                repeat=repeat,
                priority=priority,
                max_attempts=max_attempts,
            )
        )
    return enqueued, errors
