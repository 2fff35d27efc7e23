//! The assignment state machine with a hand-stepped clock: every hook in
//! every phase, every deadline, and the crash gaps.

use super::*;
use crate::claude::hook_event::NotificationKind;

const S: &str = "ccl-auto-11";
const PROMPT: &str = "Fix the flaky test.\n\nThen run the suite twice.";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ctx(now: Instant) -> Ctx<'static> {
    Ctx {
        session: S,
        now,
        paused: false,
        managed: true,
    }
}

fn paused(now: Instant) -> Ctx<'static> {
    Ctx {
        paused: true,
        ..ctx(now)
    }
}

fn task(phase: Phase, t0: Instant) -> Assignment {
    Assignment {
        project: "web".into(),
        task: Some("fix-flaky".into()),
        prompt: PROMPT.into(),
        phase,
        seen_at: t0,
        transcript: None,
    }
}

fn typing(t: Instant, retried: bool) -> Phase {
    Phase::Typing {
        since: t,
        retried,
        text: PROMPT.into(),
        looked_at: None,
    }
}

fn finishing(t: Instant, stops: u32) -> Phase {
    Phase::Finishing {
        since: t,
        message: Some("done".into()),
        claude_session_id: Some("c1".into()),
        transcript: Some("/t/c1.jsonl".into()),
        account: Some("alpha".into()),
        stops,
        events: (0..stops)
            .map(|i| PathBuf::from(format!("/e/{i}.json")))
            .collect(),
    }
}

fn interrupted(t: Instant, retype: Option<&str>) -> Phase {
    Phase::Interrupted {
        account: Some("alpha".into()),
        retype: retype.map(String::from),
        since: t,
    }
}

fn hook(event: HookEvent) -> Hook {
    Hook {
        conversation: Some("c1".into()),
        transcript: Some("/t/c1.jsonl".into()),
        event,
    }
}

fn start(source: StartSource) -> Hook {
    hook(HookEvent::SessionStart { source })
}

fn submit(prompt: &str) -> Hook {
    hook(HookEvent::UserPromptSubmit {
        prompt: prompt.into(),
    })
}

fn stop() -> Hook {
    hook(HookEvent::Stop {
        answer: Some("All green.".into()),
    })
}

fn failure(error: &str) -> Hook {
    hook(HookEvent::StopFailure {
        error: error.into(),
        message: "boom".into(),
    })
}

fn seen() -> HookSeen {
    HookSeen {
        account: Some("alpha".into()),
        retype_went_through: false,
        file: "/e/new.json".into(),
    }
}

fn kind(p: &Phase) -> &'static str {
    match p {
        Phase::Relocating { .. } => "relocating",
        Phase::Clearing { .. } => "clearing",
        Phase::Typing { .. } => "typing",
        Phase::Running => "running",
        Phase::Finishing { .. } => "finishing",
        Phase::Interrupted { .. } => "interrupted",
    }
}

/// The effects in a few words, for tables.
fn said(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .map(|e| match e {
            Effect::Type(t) if t == PROMPT => "type prompt".to_string(),
            Effect::Type(t) if t == CONTINUE_PROMPT => "type continue".to_string(),
            Effect::Type(t) if t == CONTINUE_AFTER_LIMIT_PROMPT => {
                "type continue-after-limit".to_string()
            }
            Effect::Type(t) if t == CONTINUE_LIVE_PROMPT => "type continue-live".to_string(),
            Effect::Type(t) => format!("type {t:?}"),
            Effect::Clear => "clear".into(),
            Effect::Escape => "escape".into(),
            Effect::Enter => "enter".into(),
            Effect::Relocate => "relocate".into(),
            Effect::MarkAccount(a) => format!("mark {a}"),
            Effect::Confirm { .. } => "confirm".into(),
            Effect::CheckFinishing => "check finishing".into(),
            Effect::Finish { clear_after } => format!("finish clear={clear_after}"),
            Effect::DeleteEventFiles(f) => format!("delete {} files", f.len()),
            Effect::KeepEventFile => "keep file".into(),
            Effect::Release(Release::Done) => "done".into(),
            Effect::Release(Release::Requeue) => "requeue".into(),
            Effect::Release(Release::Attempt(r)) => format!("attempt: {r}"),
            Effect::LoseAttemptAndRelaunch(r) => format!("relaunch: {r}"),
        })
        .collect()
}

#[test]
fn every_hook_in_every_phase() {
    let t0 = Instant::now();
    let restarted = format!("attempt: session {S} restarted while working on it");
    let phases = |t: Instant| {
        vec![
            Phase::Relocating { since: t },
            Phase::Clearing { since: t },
            typing(t, false),
            Phase::Running,
            finishing(t, 1),
            interrupted(t, None),
        ]
    };
    // (hook, then for each phase above: the phase after and the effects)
    type Row = (Hook, [(&'static str, Vec<String>); 6]);
    let none = Vec::<String>::new;
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let table: Vec<Row> = vec![
        (
            start(StartSource::Startup),
            [
                ("typing", v(&["type prompt"])),
                ("clearing", vec![restarted.clone()]),
                ("typing", vec![restarted.clone()]),
                ("running", vec![restarted.clone()]),
                ("finishing", v(&["finish clear=true"])),
                ("interrupted", v(&["requeue"])),
            ],
        ),
        (
            start(StartSource::Resume),
            [
                ("relocating", none()),
                ("clearing", vec![restarted.clone()]),
                ("typing", vec![restarted.clone()]),
                ("running", vec![restarted.clone()]),
                ("finishing", v(&["finish clear=true"])),
                ("typing", v(&["mark alpha", "type continue"])),
            ],
        ),
        (
            start(StartSource::Clear),
            [
                ("relocating", none()),
                ("typing", v(&["type prompt"])),
                ("typing", none()),
                ("running", none()),
                ("finishing", none()),
                ("interrupted", v(&["requeue"])),
            ],
        ),
        (
            start(StartSource::Other("compact".into())),
            [
                ("relocating", none()),
                ("clearing", none()),
                ("typing", none()),
                ("running", none()),
                ("finishing", none()),
                ("interrupted", v(&["requeue"])),
            ],
        ),
        (
            submit(PROMPT),
            [
                ("relocating", none()),
                ("clearing", none()),
                ("running", v(&["confirm"])),
                ("running", none()),
                ("finishing", none()),
                ("interrupted", none()),
            ],
        ),
        (
            submit("an earlier prompt"),
            [
                ("relocating", none()),
                ("clearing", none()),
                ("typing", none()),
                ("running", none()),
                ("finishing", none()),
                ("interrupted", none()),
            ],
        ),
        (
            stop(),
            [
                ("relocating", none()),
                ("clearing", none()),
                ("typing", none()),
                ("finishing", v(&["keep file", "check finishing"])),
                ("finishing", v(&["keep file", "check finishing"])),
                ("finishing", v(&["keep file", "check finishing"])),
            ],
        ),
        (
            failure("rate_limit"),
            [
                ("interrupted", none()),
                ("interrupted", none()),
                ("interrupted", none()),
                ("interrupted", none()),
                ("interrupted", none()),
                ("interrupted", none()),
            ],
        ),
        (
            failure("api_error"),
            [
                ("relocating", v(&["attempt: api_error: boom"])),
                ("clearing", v(&["attempt: api_error: boom"])),
                ("typing", v(&["attempt: api_error: boom"])),
                ("running", v(&["attempt: api_error: boom"])),
                ("finishing", v(&["attempt: api_error: boom"])),
                ("interrupted", v(&["attempt: api_error: boom"])),
            ],
        ),
        (
            hook(HookEvent::Notification {
                kind: NotificationKind::PermissionPrompt,
            }),
            [
                ("relocating", none()),
                ("clearing", none()),
                ("typing", none()),
                ("running", none()),
                ("finishing", none()),
                ("interrupted", none()),
            ],
        ),
        (
            hook(HookEvent::SessionEnd),
            [
                ("relocating", none()),
                ("clearing", none()),
                ("typing", none()),
                ("running", none()),
                ("finishing", none()),
                ("interrupted", none()),
            ],
        ),
    ];
    let now = t0 + secs(1);
    for (h, expected) in table {
        for (phase, (want_phase, want_effects)) in phases(t0).into_iter().zip(expected) {
            let before = kind(&phase);
            let mut a = task(phase, t0);
            let effects = on_hook(&mut a, &h, &seen(), ctx(now));
            assert_eq!(
                (kind(&a.phase), said(&effects)),
                (want_phase, want_effects),
                "{} in {before}",
                h.event.name()
            );
        }
    }
}

#[test]
fn a_late_stop_of_an_earlier_prompt_neither_finishes_nor_confirms_the_task() {
    let t0 = Instant::now();
    let mut a = task(typing(t0, false), t0);
    assert!(on_hook(&mut a, &stop(), &seen(), ctx(t0 + secs(1))).is_empty());
    assert_eq!(kind(&a.phase), "typing");
    // The submission of our own text is what starts the task's turn.
    let effects = on_hook(&mut a, &submit(PROMPT), &seen(), ctx(t0 + secs(2)));
    assert_eq!(said(&effects), ["confirm"]);
    assert_eq!(
        effects[0],
        Effect::Confirm {
            conversation: Some("c1".into()),
            transcript: Some("/t/c1.jsonl".into()),
            offset: None,
            latency: secs(2),
        }
    );
    let effects = on_hook(&mut a, &stop(), &seen(), ctx(t0 + secs(30)));
    assert_eq!(said(&effects), ["keep file", "check finishing"]);
    let Phase::Finishing {
        message,
        account,
        events,
        stops,
        ..
    } = &a.phase
    else {
        panic!("{:?}", a.phase)
    };
    assert_eq!(message.as_deref(), Some("All green."));
    assert_eq!(account.as_deref(), Some("alpha"));
    assert_eq!((events.len(), *stops), (1, 1));
}

#[test]
fn a_long_paste_is_confirmed_through_its_pasted_content_wrapper() {
    let t0 = Instant::now();
    let long = "x".repeat(5000);
    let mut a = task(
        Phase::Typing {
            since: t0,
            retried: false,
            text: long.clone(),
            looked_at: None,
        },
        t0,
    );
    // As Claude Code 2.1.329 reports a long paste (claude-code-facts §7).
    let echoed =
        format!("\n\n<pasted_content id=\"18d9\">\n{long}\n</pasted_content id=\"18d9\">\n");
    let effects = on_hook(&mut a, &submit(&echoed), &seen(), ctx(t0 + secs(1)));
    assert_eq!(said(&effects), ["confirm"], "{:?}", a.phase);
}

#[test]
fn a_swap_that_stops_the_session_before_its_prompt_is_typed_types_it_after() {
    let t0 = Instant::now();
    for (phase, source) in [
        (Phase::Clearing { since: t0 }, StartSource::Clear),
        (Phase::Relocating { since: t0 }, StartSource::Startup),
    ] {
        let mut a = task(phase, t0);
        let effects = on_hook(&mut a, &start(source), &seen(), paused(t0 + secs(1)));
        assert!(effects.is_empty());
        assert_eq!(a.phase, interrupted(t0 + secs(1), Some(PROMPT)));
        // After the swap, the resumed conversation gets the prompt itself.
        let effects = on_hook(
            &mut a,
            &start(StartSource::Resume),
            &seen(),
            ctx(t0 + secs(20)),
        );
        assert_eq!(said(&effects), ["mark alpha", "type prompt"]);
    }
}

#[test]
fn a_restart_under_a_task_during_a_swap_is_not_an_attempt() {
    let t0 = Instant::now();
    for phase in [
        typing(t0, false),
        Phase::Running,
        Phase::Clearing { since: t0 },
    ] {
        let mut a = task(phase.clone(), t0);
        let effects = on_hook(
            &mut a,
            &start(StartSource::Startup),
            &seen(),
            paused(t0 + secs(1)),
        );
        assert!(effects.is_empty(), "{phase:?}");
        assert_eq!(a.phase, phase);
    }
}

#[test]
fn a_prompt_that_went_through_before_the_swap_is_not_typed_twice() {
    let t0 = Instant::now();
    let mut a = task(interrupted(t0, Some(PROMPT)), t0);
    let through = HookSeen {
        retype_went_through: true,
        ..seen()
    };
    let effects = on_hook(&mut a, &start(StartSource::Resume), &through, ctx(t0));
    assert_eq!(said(&effects), ["mark alpha", "type continue"]);

    let mut a = task(interrupted(t0, Some(PROMPT)), t0);
    let effects = on_hook(&mut a, &start(StartSource::Resume), &seen(), ctx(t0));
    assert_eq!(said(&effects), ["mark alpha", "type prompt"]);

    // Its UserPromptSubmit arrived before the stop: nothing to retype.
    let mut a = task(interrupted(t0, Some(PROMPT)), t0);
    assert!(on_hook(&mut a, &submit(PROMPT), &seen(), ctx(t0)).is_empty());
    assert_eq!(a.phase, interrupted(t0, None));
    let effects = on_hook(&mut a, &start(StartSource::Resume), &seen(), ctx(t0));
    assert_eq!(said(&effects), ["mark alpha", "type continue"]);
}

#[test]
fn a_resume_under_no_known_account_does_not_mark_the_task() {
    let t0 = Instant::now();
    let mut a = task(interrupted(t0, None), t0);
    let nobody = HookSeen {
        account: None,
        ..seen()
    };
    let effects = on_hook(&mut a, &start(StartSource::Resume), &nobody, ctx(t0));
    assert_eq!(said(&effects), ["type continue"]);
}

#[test]
fn a_finished_turn_is_not_cleared_in_a_session_a_reload_released_or_during_a_swap() {
    let t0 = Instant::now();
    let released = Ctx {
        managed: false,
        ..ctx(t0)
    };
    let mut a = task(finishing(t0, 1), t0);
    let effects = on_hook(&mut a, &start(StartSource::Startup), &seen(), released);
    assert_eq!(said(&effects), ["finish clear=false"]);
    let mut a = task(finishing(t0, 1), t0);
    let over = TurnReading {
        state: TurnState::Over,
        next: 10,
        blocks: 0,
        saw_summary: true,
    };
    assert_eq!(
        said(&super::finishing(&mut a, Some(over), true, paused(t0))),
        ["finish clear=false"]
    );
}

#[test]
fn begin_relocates_types_or_clears() {
    let t0 = Instant::now();
    let mut a = task(Phase::Running, t0);
    assert_eq!(begin(&mut a, false, true, t0), Effect::Relocate);
    assert_eq!(kind(&a.phase), "relocating");
    let mut a = task(Phase::Running, t0);
    assert_eq!(begin(&mut a, true, true, t0), Effect::Type(PROMPT.into()));
    assert_eq!(a.phase, typing(t0, false));
    let mut a = task(Phase::Running, t0);
    assert_eq!(begin(&mut a, true, false, t0), Effect::Clear);
    assert_eq!(a.phase, Phase::Clearing { since: t0 });
}

#[test]
fn a_swap_interrupts_running_and_typing_tasks_only() {
    let t0 = Instant::now();
    let mut a = task(Phase::Running, t0);
    interrupt(&mut a, Some("alpha".into()), t0);
    assert_eq!(a.phase, interrupted(t0, None));
    let mut a = task(typing(t0, false), t0);
    interrupt(&mut a, Some("alpha".into()), t0);
    assert_eq!(a.phase, interrupted(t0, Some(PROMPT)));
    for phase in [
        Phase::Clearing { since: t0 },
        Phase::Relocating { since: t0 },
        finishing(t0, 1),
    ] {
        let mut a = task(phase.clone(), t0);
        interrupt(&mut a, Some("alpha".into()), t0);
        assert_eq!(a.phase, phase);
    }
    // Relocating for a task not claimed yet.
    let mut a = Assignment {
        task: None,
        ..task(Phase::Running, t0)
    };
    interrupt(&mut a, None, t0);
    assert_eq!(a.phase, Phase::Running);
}

fn rules() -> Rules {
    Rules {
        stale_after: secs(600),
        stale_while_waiting: false,
        unpaused_at: None,
        seated: None,
    }
}

fn alive(state: State) -> SessionSeen {
    SessionSeen {
        state: Some(state),
        account: Some("alpha".into()),
        conversation: Some("c1".into()),
        ..SessionSeen::default()
    }
}

#[test]
fn an_unconfirmed_prompt_gets_one_more_enter_then_the_transcript_then_gives_up() {
    let t0 = Instant::now();
    let mut a = task(typing(t0, false), t0);
    let working = alive(State::Working);
    assert!(on_deadline(&mut a, &working, &rules(), ctx(t0 + secs(10))).is_empty());
    let effects = on_deadline(&mut a, &working, &rules(), ctx(t0 + secs(11)));
    assert_eq!(said(&effects), ["enter"]);
    assert!(!wants_transcript_look(&a, ctx(t0 + secs(10))));
    assert!(wants_transcript_look(&a, ctx(t0 + secs(12))));
    // Not in the transcript: looked at, and not again for a while.
    assert!(on_deadline(&mut a, &working, &rules(), ctx(t0 + secs(12))).is_empty());
    assert!(!wants_transcript_look(&a, ctx(t0 + secs(13))));
    assert!(wants_transcript_look(&a, ctx(t0 + secs(14))));
    // Given up only after the whole grace, never typed again.
    assert!(on_deadline(&mut a, &working, &rules(), ctx(t0 + secs(130))).is_empty());
    let effects = on_deadline(&mut a, &working, &rules(), ctx(t0 + secs(133)));
    assert_eq!(
        said(&effects),
        [format!(
            "relaunch: the prompt typed into {S} was never confirmed"
        )]
    );
}

#[test]
fn an_unconfirmed_prompt_found_in_the_transcript_is_taken_as_submitted() {
    let t0 = Instant::now();
    let mut a = task(typing(t0, true), t0);
    let mut found = alive(State::Working);
    found.prompt_in_transcript = Some(("/t/c1.jsonl".into(), 4096));
    let effects = on_deadline(&mut a, &found, &rules(), ctx(t0 + secs(11)));
    assert_eq!(
        effects,
        [Effect::Confirm {
            conversation: Some("c1".into()),
            transcript: Some("/t/c1.jsonl".into()),
            offset: Some(4096),
            latency: secs(11),
        }]
    );
    assert_eq!(a.phase, Phase::Running);
}

#[test]
fn a_big_paste_is_given_more_time_before_its_enter() {
    let t0 = Instant::now();
    let mib = "y".repeat(1 << 20);
    assert_eq!(submit_deadline(&mib), secs(70));
    let mut a = task(
        Phase::Typing {
            since: t0,
            retried: false,
            text: mib,
            looked_at: None,
        },
        t0,
    );
    assert!(on_deadline(&mut a, &alive(State::Working), &rules(), ctx(t0 + secs(60))).is_empty());
    assert_eq!(
        said(&on_deadline(
            &mut a,
            &alive(State::Working),
            &rules(),
            ctx(t0 + secs(71))
        )),
        ["enter"]
    );
}

#[test]
fn a_swap_under_way_owns_the_sessions_no_enter_no_give_up_no_attempt() {
    let t0 = Instant::now();
    let late = t0 + secs(3600);
    for phase in [typing(t0, false), typing(t0, true), Phase::Running] {
        let mut a = task(phase.clone(), t0);
        assert!(on_deadline(&mut a, &alive(State::Working), &rules(), paused(late)).is_empty());
        assert!(on_deadline(&mut a, &alive(State::Dead), &rules(), paused(late)).is_empty());
        assert!(!wants_transcript_look(&a, paused(late)));
        assert_eq!(a.phase, phase);
    }
}

#[test]
fn a_session_that_dies_under_its_task_costs_an_attempt_unless_its_answer_is_in() {
    let t0 = Instant::now();
    let ended = format!("attempt: session {S} ended while working on it");
    for state in [
        None,
        Some(State::Dead),
        Some(State::Backoff),
        Some(State::Failed),
    ] {
        let gone = SessionSeen {
            state,
            ..SessionSeen::default()
        };
        for phase in [
            Phase::Running,
            typing(t0, false),
            Phase::Clearing { since: t0 },
        ] {
            let mut a = task(phase, t0);
            assert_eq!(
                said(&on_deadline(&mut a, &gone, &rules(), ctx(t0 + secs(1)))),
                std::slice::from_ref(&ended)
            );
        }
        let mut a = task(finishing(t0, 1), t0);
        assert_eq!(
            said(&on_deadline(&mut a, &gone, &rules(), ctx(t0 + secs(1)))),
            ["finish clear=true"]
        );
    }
}

#[test]
fn a_session_a_reload_released_is_not_dead() {
    let t0 = Instant::now();
    let released = Ctx {
        managed: false,
        ..ctx(t0 + secs(1))
    };
    let mut a = task(Phase::Running, t0);
    assert!(on_deadline(&mut a, &SessionSeen::default(), &rules(), released).is_empty());
}

#[test]
fn a_running_task_with_no_sign_of_life_is_relaunched_and_the_attempt_counts() {
    let t0 = Instant::now();
    let mut a = task(Phase::Running, t0);
    let mut quiet = alive(State::Working);
    quiet.transcript_quiet = Some(secs(700));
    quiet.events_quiet = Some(secs(650));
    // Its transcript or its events kept it alive until now.
    let mut lively = quiet.clone();
    lively.events_quiet = Some(secs(5));
    assert!(on_deadline(&mut a, &lively, &rules(), ctx(t0 + secs(700))).is_empty());
    assert!(on_deadline(&mut a, &quiet, &rules(), ctx(t0 + secs(599))).is_empty());
    assert_eq!(
        said(&on_deadline(&mut a, &quiet, &rules(), ctx(t0 + secs(700)))),
        [format!(
            "relaunch: session {S} showed no sign of life for 650s"
        )]
    );
}

#[test]
fn clear_and_relocation_deadlines() {
    let t0 = Instant::now();
    let idle = alive(State::Idle);
    let mut a = task(Phase::Clearing { since: t0 }, t0);
    assert!(on_deadline(&mut a, &idle, &rules(), ctx(t0 + secs(15))).is_empty());
    assert_eq!(
        said(&on_deadline(&mut a, &idle, &rules(), ctx(t0 + secs(16)))),
        ["requeue"]
    );
    let mut a = task(Phase::Relocating { since: t0 }, t0);
    assert!(on_deadline(
        &mut a,
        &SessionSeen::default(),
        &rules(),
        ctx(t0 + secs(90))
    )
    .is_empty());
    assert_eq!(
        said(&on_deadline(
            &mut a,
            &SessionSeen::default(),
            &rules(),
            ctx(t0 + secs(91))
        )),
        [format!(
            "attempt: session {S} did not start in the project folder in time"
        )]
    );
}

#[test]
fn a_refused_task_continues_when_its_account_can_take_work_again() {
    let t0 = Instant::now();
    let back = Rules {
        unpaused_at: Some(t0 + secs(100)),
        ..rules()
    };
    let limited = alive(State::Limited);
    let mut a = task(interrupted(t0, None), t0);
    // Not before dispatch resumed and settled.
    assert!(on_deadline(&mut a, &limited, &rules(), ctx(t0 + secs(200))).is_empty());
    assert!(on_deadline(&mut a, &limited, &back, ctx(t0 + secs(102))).is_empty());
    // Not when the session moved to another account (the swap continues it).
    let mut elsewhere = limited.clone();
    elsewhere.account = Some("beta".into());
    assert!(on_deadline(&mut a, &elsewhere, &back, ctx(t0 + secs(104))).is_empty());
    assert!(on_deadline(&mut a, &alive(State::Working), &back, ctx(t0 + secs(104))).is_empty());
    assert_eq!(
        said(&on_deadline(&mut a, &limited, &back, ctx(t0 + secs(104)))),
        ["escape", "type continue-after-limit"]
    );
    assert_eq!(kind(&a.phase), "typing");
    // A prompt typed but not confirmed before the refusal is typed again instead.
    let mut a = task(interrupted(t0, Some(PROMPT)), t0);
    assert_eq!(
        said(&on_deadline(
            &mut a,
            &alive(State::Idle),
            &back,
            ctx(t0 + secs(104))
        )),
        ["escape", "type prompt"]
    );
}

/// Live mode: a refused session waits on the limit screen; once the seat
/// holds another account (whether the swap came before or after the
/// refusal was heard) it is given Escape and told to go on, as that account.
#[test]
fn live_a_refused_task_goes_on_once_the_seat_holds_another_account() {
    let t0 = Instant::now();
    let limited = alive(State::Limited);
    let seated = |a: &str| Rules {
        seated: Some(a.into()),
        ..rules()
    };
    let mut a = task(interrupted(t0, None), t0);
    // The seat still holds the refusing account: nothing.
    assert!(on_deadline(&mut a, &limited, &seated("alpha"), ctx(t0 + secs(10))).is_empty());
    // Too soon after the refusal (the limit screen settles first).
    assert!(on_deadline(&mut a, &limited, &seated("beta"), ctx(t0 + secs(1))).is_empty());
    // Working: not typed into.
    assert!(on_deadline(
        &mut a,
        &alive(State::Working),
        &seated("beta"),
        ctx(t0 + secs(4))
    )
    .is_empty());
    assert_eq!(
        said(&on_deadline(
            &mut a,
            &limited,
            &seated("beta"),
            ctx(t0 + secs(4))
        )),
        ["mark beta", "escape", "type continue-live"]
    );
    assert_eq!(kind(&a.phase), "typing");
}

#[test]
fn an_interrupted_task_whose_session_fails_to_come_back_goes_back_to_the_inbox() {
    let t0 = Instant::now();
    for state in [State::Failed, State::Backoff] {
        let mut a = task(interrupted(t0, None), t0);
        assert!(on_deadline(&mut a, &alive(state), &rules(), paused(t0)).is_empty());
        assert_eq!(
            said(&on_deadline(&mut a, &alive(state), &rules(), ctx(t0))),
            ["requeue"]
        );
    }
}

fn reading(state: TurnState, blocks: u32, saw_summary: bool) -> TurnReading {
    TurnReading {
        state,
        next: 777,
        blocks,
        saw_summary,
    }
}

#[test]
fn a_stop_is_the_end_when_the_transcript_says_the_turn_is_over() {
    let t0 = Instant::now();
    let mut a = task(finishing(t0, 1), t0);
    assert_eq!(finishing_source(&mut a), Some(("/t/c1.jsonl".into(), 0)));
    let effects = super::finishing(
        &mut a,
        Some(reading(TurnState::Over, 0, true)),
        true,
        ctx(t0),
    );
    assert_eq!(said(&effects), ["finish clear=true"]);
}

#[test]
fn a_stop_hook_that_blocks_the_end_sends_the_task_back_to_running() {
    let t0 = Instant::now();
    let mut a = task(finishing(t0, 2), t0);
    a.transcript = Some(("/t/c1.jsonl".into(), 100));
    let effects = super::finishing(
        &mut a,
        Some(reading(TurnState::GoesOn, 1, true)),
        true,
        ctx(t0),
    );
    // One of two Stops answered: still finishing, read on from the summary.
    assert!(effects.is_empty());
    assert_eq!(a.transcript, Some(("/t/c1.jsonl".into(), 777)));
    let Phase::Finishing { stops, .. } = &a.phase else {
        panic!()
    };
    assert_eq!(*stops, 1);
    let effects = super::finishing(
        &mut a,
        Some(reading(TurnState::GoesOn, 1, true)),
        true,
        ctx(t0),
    );
    assert_eq!(said(&effects), ["delete 2 files"]);
    assert_eq!(a.phase, Phase::Running);
}

#[test]
fn a_stop_with_no_word_from_the_transcript_waits_for_its_summary_when_this_version_writes_them() {
    let t0 = Instant::now();
    let unknown = || Some(reading(TurnState::Unknown, 0, false));
    // No summaries seen from this Claude Code: the Stop is the end after the grace.
    let mut a = task(finishing(t0, 1), t0);
    assert!(super::finishing(&mut a, unknown(), false, ctx(t0 + secs(9))).is_empty());
    assert_eq!(
        said(&super::finishing(
            &mut a,
            unknown(),
            false,
            ctx(t0 + secs(10))
        )),
        ["finish clear=true"]
    );
    // Summaries seen: it waits (a slow user hook), up to the longest wait.
    let mut a = task(finishing(t0, 1), t0);
    assert!(super::finishing(&mut a, unknown(), true, ctx(t0 + secs(600))).is_empty());
    assert_eq!(
        said(&super::finishing(
            &mut a,
            unknown(),
            true,
            ctx(t0 + FINISH_WAIT_MAX)
        )),
        ["finish clear=true"]
    );
    // No transcript to read at all: the grace.
    let mut a = task(finishing(t0, 1), t0);
    assert_eq!(
        said(&super::finishing(&mut a, None, true, ctx(t0 + secs(10)))),
        ["finish clear=true"]
    );
}

#[test]
fn a_restart_between_enter_and_user_prompt_submit_neither_loses_nor_repeats_the_task() {
    let t0 = Instant::now();
    // Adopted as typed and already retried: the buffered event, or else the
    // transcript, decides; never typed again.
    let phase = adopted(false, false, "alpha", Some(PROMPT.into()), t0).unwrap();
    assert_eq!(phase, typing(t0, true));
    let mut a = task(phase.clone(), t0);
    assert_eq!(
        said(&on_hook(
            &mut a,
            &submit(PROMPT),
            &seen(),
            ctx(t0 + secs(1))
        )),
        ["confirm"]
    );
    // Its event was lost with the crash: the transcript shows the prompt.
    let mut a = task(phase.clone(), t0);
    assert!(on_deadline(&mut a, &alive(State::Working), &rules(), ctx(t0 + secs(5))).is_empty());
    assert!(wants_transcript_look(&a, ctx(t0 + secs(11))));
    let mut found = alive(State::Working);
    found.prompt_in_transcript = Some(("/t/c1.jsonl".into(), 10));
    assert_eq!(
        said(&on_deadline(&mut a, &found, &rules(), ctx(t0 + secs(11)))),
        ["confirm"]
    );
    // It never arrived: the attempt counts after the grace, with no retype.
    let mut a = task(phase, t0);
    for s in (11..=130).step_by(2) {
        let effects = on_deadline(&mut a, &alive(State::Idle), &rules(), ctx(t0 + secs(s)));
        assert!(
            effects
                .iter()
                .all(|e| !matches!(e, Effect::Type(_) | Effect::Enter)),
            "{effects:?}"
        );
    }
    assert_eq!(
        said(&on_deadline(
            &mut a,
            &alive(State::Idle),
            &rules(),
            ctx(t0 + secs(131))
        )),
        [format!(
            "relaunch: the prompt typed into {S} was never confirmed"
        )]
    );
}

#[test]
fn tasks_found_active_at_start_are_adopted_by_what_their_marker_proves() {
    let t0 = Instant::now();
    assert_eq!(
        adopted(true, true, "alpha", None, t0),
        Some(interrupted(t0, None))
    );
    assert_eq!(
        adopted(false, true, "alpha", None, t0),
        Some(Phase::Running)
    );
    // Not confirmed and unreadable: back to the inbox.
    assert_eq!(adopted(false, false, "alpha", None, t0), None);
    assert_eq!(adopted(true, false, "alpha", None, t0), None);
}

#[test]
fn a_session_waiting_for_a_person_is_not_stale_unless_the_operator_says_so() {
    let t0 = Instant::now();
    let mut waiting = alive(State::Waiting);
    waiting.transcript_quiet = Some(secs(3600));
    waiting.events_quiet = Some(secs(3600));
    let mut a = task(Phase::Running, t0);
    assert!(on_deadline(&mut a, &waiting, &rules(), ctx(t0 + secs(3600))).is_empty());
    let strict = Rules {
        stale_while_waiting: true,
        ..rules()
    };
    assert_eq!(
        said(&on_deadline(
            &mut a,
            &waiting,
            &strict,
            ctx(t0 + secs(3600))
        )),
        [format!(
            "relaunch: session {S} showed no sign of life for 3600s"
        )]
    );
}

#[test]
fn a_session_waiting_for_a_person_is_never_pressed_enter() {
    let t0 = Instant::now();
    for retried in [false, true] {
        let mut a = task(typing(t0, retried), t0);
        let late = ctx(t0 + secs(3600));
        assert!(on_deadline(&mut a, &alive(State::Waiting), &rules(), late).is_empty());
        assert_eq!(a.phase, typing(t0, retried));
    }
}
