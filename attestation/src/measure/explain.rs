//! Why a TDX quote's registers differ from an image's expectation: register by register, and
//! event by event through the boot's event log, naming the artifact or setting each event
//! comes from.
//!
//! Inputs are the quote's registers, the parsed CCEL event log of the same boot and the
//! expectation [`super::image::tdx_image`] computed from the manifest. The log is first checked
//! against the quote (its replay must give the quote's RTMRs, or it belongs to another boot and
//! its events prove nothing); then for each register the expected events are aligned with the
//! logged ones (longest common subsequence on event type and digest) and every event is
//! classified as matching, differing (same kind of event, other digest), missing or unexpected.

use serde::Serialize;

use super::eventlog::{
    Event, EventLog, EventType, LINUX_INITRD_TAG, LINUX_LOAD_OPTIONS_TAG, Register,
};
use super::tdx::ExpectedTdx;
use crate::evidence::{Measurement, TdxMeasurements};

/// How one register compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterStatus {
    /// The quote reports the expected value.
    Match,
    /// The quote reports another value.
    Differs,
    /// No value is expected (RTMR0 without a captured value): not pinned, not compared.
    NotPinned,
}

/// One register: expected, reported by the quote, and what the event log replays to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegisterComparison {
    /// The register.
    pub register: Register,
    /// The expected value (`None`: not pinned).
    pub expected: Option<Measurement>,
    /// The value in the quote.
    pub actual: Measurement,
    /// The event log's replay of this register (`None` for MRTD, which no event extends).
    pub replayed: Option<Measurement>,
    /// Expected against actual.
    pub status: RegisterStatus,
    /// What this register measures.
    pub measures: &'static str,
}

/// How one event compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Logged with the expected digest.
    Match,
    /// Logged where an event of the same type was expected, with another digest.
    Differs,
    /// Expected but not logged.
    Missing,
    /// Logged but not expected.
    Unexpected,
    /// In a register whose events are not predicted (RTMR0 when no VMM and VM shape was given).
    NotPredicted,
}

/// One event of the comparison.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventComparison {
    /// The register it extends.
    pub register: Register,
    /// The comparison.
    pub status: EventStatus,
    /// The expected event, if one was.
    pub expected: Option<Event>,
    /// The logged event, if one was.
    pub actual: Option<Event>,
    /// The artifact or setting the event measures.
    pub source: &'static str,
}

/// The full comparison of a quote and its event log with an expectation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// MRTD and RTMR0-3.
    pub registers: Vec<RegisterComparison>,
    /// RTMRs whose log replay differs from the quote: the log is incomplete or of another
    /// boot, and its events do not explain those registers.
    pub log_not_of_this_quote: Vec<Register>,
    /// Every extended event, grouped by register in log order, missing ones where expected.
    pub events: Vec<EventComparison>,
}

impl Explanation {
    /// True when every pinned register matches and the log belongs to the quote.
    pub fn matches(&self) -> bool {
        self.log_not_of_this_quote.is_empty()
            && self
                .registers
                .iter()
                .all(|r| r.status != RegisterStatus::Differs)
    }

    /// The events that are not as expected (differs, missing, unexpected).
    pub fn differing_events(&self) -> impl Iterator<Item = &EventComparison> {
        self.events.iter().filter(|e| {
            matches!(
                e.status,
                EventStatus::Differs | EventStatus::Missing | EventStatus::Unexpected
            )
        })
    }
}

/// What a register holds, for operators.
pub fn register_measures(register: Register) -> &'static str {
    match register {
        Register::Mrtd => "firmware image (TDVF pages added at build time)",
        Register::Rtmr0 => {
            "firmware configuration: TD HOB, variable store, secure-boot variables, VMM ACPI tables (VM shape)"
        }
        Register::Rtmr1 => "boot: kernel image (Authenticode) and firmware boot actions",
        Register::Rtmr2 => "kernel command line and initrd",
        Register::Rtmr3 => "guest runtime extensions (chrysalis extends nothing)",
    }
}

fn tag_id(e: &Event) -> Option<u32> {
    (e.data.len() >= 4).then(|| u32::from_le_bytes([e.data[0], e.data[1], e.data[2], e.data[3]]))
}

/// The artifact or setting an event measures (in a chrysalis direct boot; other boot paths
/// are named where recognisable).
pub fn event_source(e: &Event) -> &'static str {
    let t = e.event_type;
    match e.register {
        Register::Mrtd => "firmware (TDVF)",
        Register::Rtmr0 => match t {
            EventType::EV_EFI_HANDOFF_TABLES | EventType::EV_EFI_HANDOFF_TABLES2 => {
                "VMM: TD HOB (memory layout of the VM shape)"
            }
            EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB
            | EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB2 => {
                "firmware: configuration firmware volume (variable store)"
            }
            EventType::EV_EFI_VARIABLE_DRIVER_CONFIG => "firmware: secure-boot variables",
            EventType::EV_PLATFORM_CONFIG_FLAGS => {
                "VMM: ACPI tables (vCPUs, memory, devices, QEMU version)"
            }
            EventType::EV_EFI_VARIABLE_BOOT | EventType::EV_EFI_VARIABLE_BOOT2 => {
                "firmware: boot variables (VMM device list)"
            }
            EventType::EV_EFI_VARIABLE_AUTHORITY => {
                "secure boot: certificate that verified an image (shim)"
            }
            EventType::EV_SEPARATOR => "firmware: separator",
            _ => "firmware configuration",
        },
        Register::Rtmr1 => match t {
            EventType::EV_EFI_BOOT_SERVICES_APPLICATION => {
                "kernel: Authenticode SHA-384 of artifacts.kernel (shim or GRUB on other boot paths)"
            }
            EventType::EV_EFI_BOOT_SERVICES_DRIVER | EventType::EV_EFI_RUNTIME_SERVICES_DRIVER => {
                "VMM: a PCI option ROM or driver (device list)"
            }
            EventType::EV_EFI_GPT_EVENT | EventType::EV_EFI_GPT_EVENT2 => {
                "boot disk partition table (not a direct boot)"
            }
            EventType::EV_EFI_ACTION | EventType::EV_SEPARATOR => "firmware boot flow (constant)",
            _ => "boot loader",
        },
        Register::Rtmr2 => match (t, tag_id(e)) {
            (EventType::EV_EVENT_TAG, Some(LINUX_LOAD_OPTIONS_TAG)) => {
                "kernel command line: manifest kernel_cmdline (+ \" initrd=initrd\")"
            }
            (EventType::EV_EVENT_TAG, Some(LINUX_INITRD_TAG)) => "initrd: artifacts.initramfs",
            (EventType::EV_IPL, _) => "boot loader (GRUB/shim): not a direct boot",
            _ => "kernel command line / initrd",
        },
        Register::Rtmr3 => "guest runtime (chrysalis extends nothing)",
    }
}

/// Where a logged event that no prediction accounts for comes from.
fn unexpected_source(e: &Event) -> &'static str {
    match (e.register, e.event_type) {
        (Register::Rtmr1, EventType::EV_EFI_BOOT_SERVICES_APPLICATION) => {
            "an extra EFI application (shim, GRUB, a UEFI shell): not a direct kernel boot"
        }
        _ => event_source(e),
    }
}

/// Compares a quote's registers and its boot's event log with an expectation.
///
/// `expected.events` must hold the predicted events of RTMR1 and RTMR2 (as
/// [`super::tdx::expected_tdx`] returns them) and may hold those of RTMR0 (as
/// [`super::image::tdx_image_for_shape`] adds them): RTMR0 events are then aligned like the
/// others, so that a host with other ACPI tables or another TD HOB shows the differing ACPI or
/// HOB event; without them RTMR0 events are listed as not predicted. RTMR3 is expected to have
/// none. This does NOT verify the quote's signature: pass registers of a quote that was
/// verified, or treat the result as a diagnosis only.
pub fn explain_tdx(
    actual: &TdxMeasurements,
    log: &EventLog,
    expected: &ExpectedTdx,
) -> Explanation {
    let actual = &actual.registers;
    let replay = log.replay();
    let log_not_of_this_quote = (0..4)
        .filter(|&i| replay[i] != actual.rtmr[i])
        .filter_map(Register::from_rtmr)
        .collect();

    let [_, rtmr1, rtmr2, rtmr3] = expected.registers.rtmr;
    let exp = [
        Some(expected.registers.mr_td),
        expected.rtmr0(),
        Some(rtmr1),
        Some(rtmr2),
        Some(rtmr3),
    ];
    let registers = [
        Register::Mrtd,
        Register::Rtmr0,
        Register::Rtmr1,
        Register::Rtmr2,
        Register::Rtmr3,
    ]
    .into_iter()
    .zip(exp)
    .map(|(register, expected)| {
        let (actual, replayed) = match register.rtmr() {
            None => (actual.mr_td, None),
            Some(i) => (actual.rtmr[i], Some(replay[i])),
        };
        let status = match expected {
            None => RegisterStatus::NotPinned,
            Some(e) if e == actual => RegisterStatus::Match,
            Some(_) => RegisterStatus::Differs,
        };
        RegisterComparison {
            register,
            expected,
            actual,
            replayed,
            status,
            measures: register_measures(register),
        }
    })
    .collect();

    let mut events = Vec::new();
    for register in [
        Register::Rtmr0,
        Register::Rtmr1,
        Register::Rtmr2,
        Register::Rtmr3,
    ] {
        let logged: Vec<&Event> = log
            .events
            .iter()
            .filter(|e| e.register == register && e.is_extended())
            .collect();
        let predicted: Vec<&Event> = expected
            .events
            .iter()
            .filter(|e| e.register == register && e.is_extended())
            .collect();
        if register == Register::Rtmr0 && predicted.is_empty() {
            events.extend(logged.into_iter().map(|a| EventComparison {
                register,
                status: EventStatus::NotPredicted,
                expected: None,
                actual: Some(a.clone()),
                source: event_source(a),
            }));
            continue;
        }
        events.extend(align(register, &predicted, &logged));
    }
    Explanation {
        registers,
        log_not_of_this_quote,
        events,
    }
}

fn same(a: &Event, b: &Event) -> bool {
    a.event_type == b.event_type && a.digest == b.digest
}

/// Aligns predicted and logged events of one register (LCS on type and digest); between two
/// matches, events of the same type are paired as differing, the rest are missing/unexpected;
/// finally a missing and an unexpected event of the same type anywhere are paired as differing.
fn align(register: Register, exp: &[&Event], act: &[&Event]) -> Vec<EventComparison> {
    let (n, m) = (exp.len(), act.len());
    // lcs[i][j]: LCS length of exp[i..] and act[j..].
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if same(exp[i], act[j]) {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    let mut gap_e: Vec<&Event> = Vec::new();
    let mut gap_a: Vec<&Event> = Vec::new();
    let flush = |out: &mut Vec<EventComparison>, ge: &mut Vec<&Event>, ga: &mut Vec<&Event>| {
        let mut used = vec![false; ge.len()];
        for a in ga.drain(..) {
            let pair = (0..ge.len()).find(|&k| !used[k] && ge[k].event_type == a.event_type);
            let expected = pair.map(|k| {
                used[k] = true;
                ge[k].clone()
            });
            let source = match &expected {
                Some(e) => event_source(e),
                None => unexpected_source(a),
            };
            out.push(EventComparison {
                register,
                status: if expected.is_some() {
                    EventStatus::Differs
                } else {
                    EventStatus::Unexpected
                },
                expected,
                actual: Some(a.clone()),
                source,
            });
        }
        for (k, e) in ge.drain(..).enumerate() {
            if !used[k] {
                out.push(EventComparison {
                    register,
                    status: EventStatus::Missing,
                    expected: Some(e.clone()),
                    actual: None,
                    source: event_source(e),
                });
            }
        }
    };
    while i < n || j < m {
        if i < n && j < m && same(exp[i], act[j]) && lcs[i][j] == lcs[i + 1][j + 1] + 1 {
            flush(&mut out, &mut gap_e, &mut gap_a);
            out.push(EventComparison {
                register,
                status: EventStatus::Match,
                expected: Some(exp[i].clone()),
                actual: Some(act[j].clone()),
                source: event_source(exp[i]),
            });
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            gap_a.push(act[j]);
            j += 1;
        } else {
            gap_e.push(exp[i]);
            i += 1;
        }
    }
    flush(&mut out, &mut gap_e, &mut gap_a);
    // A predicted event that is missing and a logged one of the same type that was not
    // expected, in different gaps (the firmware logged in another order): one event differs.
    let mut k = 0;
    while k < out.len() {
        if out[k].status == EventStatus::Missing {
            let ty = out[k].expected.as_ref().map(|e| e.event_type);
            if let Some(u) = out.iter().position(|c| {
                c.status == EventStatus::Unexpected && c.actual.as_ref().map(|a| a.event_type) == ty
            }) {
                let missing = out.remove(k);
                let u = if u > k { u - 1 } else { u };
                out[u].status = EventStatus::Differs;
                out[u].source = missing.source;
                out[u].expected = missing.expected;
                continue;
            }
        }
        k += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::TdxRegisters;
    use crate::measure::eventlog::{SpecIdEvent, replay_events};
    use crate::measure::tdx::direct_boot_events;
    use chrysalis_testkit::fixtures::efi_pe;

    fn expectation(kernel: &[u8], initrd: &[u8], cmdline: &str) -> ExpectedTdx {
        let events = direct_boot_events(kernel, Some(initrd), cmdline).unwrap();
        let [_, rtmr1, rtmr2, rtmr3] = replay_events(&events);
        ExpectedTdx {
            registers: TdxRegisters {
                mr_td: Measurement([7; 48]),
                rtmr: [Measurement::ZERO, rtmr1, rtmr2, rtmr3],
            },
            rtmr0_pinned: false,
            events,
        }
    }

    /// A "quote" and log of a boot of the given artifacts, with one RTMR0 event.
    fn boot(kernel: &[u8], initrd: &[u8], cmdline: &str) -> (TdxMeasurements, EventLog) {
        let mut events = vec![Event::measuring(
            Register::Rtmr0,
            EventType::EV_PLATFORM_CONFIG_FLAGS,
            b"acpi",
            b"ACPI DATA".to_vec(),
        )];
        events.extend(direct_boot_events(kernel, Some(initrd), cmdline).unwrap());
        let rtmr = replay_events(&events);
        let m = crate::sim::td_measurements(Measurement([7; 48]), rtmr);
        let log = EventLog {
            spec_id: SpecIdEvent {
                platform_class: 0,
                spec_version: (2, 0),
                spec_errata: 0,
                uintn_size: 2,
                algorithms: vec![],
                vendor_info: vec![],
            },
            events,
            len: 0,
        };
        (m, log)
    }

    #[test]
    fn the_same_artifacts_match_event_by_event() {
        let k = efi_pe(1, b"");
        let exp = expectation(&k, b"initrd", "console=ttyS0");
        let (q, log) = boot(&k, b"initrd", "console=ttyS0");
        let x = explain_tdx(&q, &log, &exp);
        assert!(x.matches(), "{x:#?}");
        assert_eq!(x.differing_events().count(), 0);
        assert_eq!(x.registers[1].status, RegisterStatus::NotPinned);
        assert_eq!(x.events[0].status, EventStatus::NotPredicted);
    }

    #[test]
    fn a_changed_initrd_is_named_and_nothing_else() {
        let k = efi_pe(1, b"");
        let exp = expectation(&k, b"initrd", "console=ttyS0");
        let (q, log) = boot(&k, b"initrd!", "console=ttyS0");
        let x = explain_tdx(&q, &log, &exp);
        assert!(!x.matches());
        let st: Vec<_> = x.registers.iter().map(|r| r.status).collect();
        use RegisterStatus::*;
        assert_eq!(st, [Match, NotPinned, Match, Differs, Match]);
        let diff: Vec<_> = x.differing_events().collect();
        assert_eq!(diff.len(), 1, "{diff:#?}");
        assert_eq!(diff[0].status, EventStatus::Differs);
        assert_eq!(diff[0].source, "initrd: artifacts.initramfs");
    }

    #[test]
    fn a_changed_kernel_and_an_extra_driver_are_named() {
        let exp = expectation(&efi_pe(1, b""), b"i", "c");
        let (q, mut log) = boot(&efi_pe(2, b""), b"i", "c");
        // An option ROM measured before the kernel.
        log.events.insert(
            1,
            Event::measuring(
                Register::Rtmr1,
                EventType::EV_EFI_BOOT_SERVICES_DRIVER,
                b"rom",
                vec![],
            ),
        );
        let x = explain_tdx(&q, &log, &exp);
        // The log no longer replays to the "quote" (the ROM was inserted afterwards).
        assert_eq!(x.log_not_of_this_quote, [Register::Rtmr1]);
        let diff: Vec<_> = x.differing_events().map(|e| (e.status, e.source)).collect();
        assert_eq!(
            diff,
            [
                (
                    EventStatus::Unexpected,
                    "VMM: a PCI option ROM or driver (device list)"
                ),
                (
                    EventStatus::Differs,
                    "kernel: Authenticode SHA-384 of artifacts.kernel (shim or GRUB on other boot paths)"
                ),
            ]
        );
    }

    /// A host whose QEMU serves other ACPI tables than the predicted ones: RTMR0 differs and the
    /// one ACPI event that differs is named, with the fw_cfg file in its description.
    #[test]
    fn a_host_with_other_acpi_tables_is_named_by_its_acpi_event() {
        use crate::measure::rtmr0::{rtmr0, rtmr0_events};
        use crate::measure::tdx::TdvfMetadata;
        use chrysalis_testkit::fixtures::tdvf_from_sev_suffix;
        let fw = tdvf_from_sev_suffix();
        let md = TdvfMetadata::parse(&fw).unwrap();
        let acpi = crate::measure::rtmr0::tests::sample_acpi();
        let predicted = rtmr0_events(&fw, &md, 2048, &acpi, "QEMU test").unwrap();
        let k = efi_pe(1, b"");
        let mut exp = expectation(&k, b"i", "c");
        exp.pin_rtmr0(rtmr0(&predicted));
        let mut all = predicted.clone();
        all.append(&mut exp.events);
        exp.events = all;

        // The host's VMM adds a table: etc/acpi/tables differs, everything else is the same.
        let mut hostile = acpi.clone();
        let tables = hostile
            .files
            .iter_mut()
            .find(|(n, _)| n == "etc/acpi/tables")
            .unwrap();
        tables.1[200] = 0x42;
        let mut events = rtmr0_events(&fw, &md, 2048, &hostile, "host").unwrap();
        // As logged: event data "ACPI DATA", no prediction's description.
        for e in &mut events {
            e.description = crate::measure::eventlog::describe(e.event_type, &e.data);
        }
        events.extend(direct_boot_events(&k, Some(b"i"), "c").unwrap());
        let m = crate::sim::td_measurements(Measurement([7; 48]), replay_events(&events));
        let (_, mut log) = boot(&k, b"i", "c");
        log.events = events;
        let x = explain_tdx(&m, &log, &exp);
        assert!(!x.matches());
        assert_eq!(x.registers[1].status, RegisterStatus::Differs);
        let diff: Vec<_> = x.differing_events().collect();
        assert_eq!(diff.len(), 1, "{diff:#?}");
        assert_eq!(diff[0].status, EventStatus::Differs);
        assert_eq!(diff[0].register, Register::Rtmr0);
        assert_eq!(
            diff[0].source,
            "VMM: ACPI tables (vCPUs, memory, devices, QEMU version)"
        );
        let expected = diff[0].expected.as_ref().unwrap();
        assert!(
            expected.description.contains("etc/acpi/tables"),
            "{}",
            expected.description
        );
        // Every other RTMR0 event matches.
        let matched = x
            .events
            .iter()
            .filter(|e| e.register == Register::Rtmr0 && e.status == EventStatus::Match)
            .count();
        assert_eq!(matched, predicted.len() - 1);
    }

    #[test]
    fn a_missing_event_is_reported() {
        let exp = expectation(&efi_pe(1, b""), b"i", "c");
        let (_, mut log) = boot(&efi_pe(1, b""), b"i", "c");
        log.events.retain(|e| {
            tag_id(e) != Some(LINUX_INITRD_TAG) || e.event_type != EventType::EV_EVENT_TAG
        });
        let rtmr = log.replay();
        let q = crate::sim::td_measurements(Measurement([7; 48]), rtmr);
        let x = explain_tdx(&q, &log, &exp);
        let diff: Vec<_> = x.differing_events().map(|e| (e.status, e.source)).collect();
        assert_eq!(
            diff,
            [(EventStatus::Missing, "initrd: artifacts.initramfs")]
        );
        assert!(x.log_not_of_this_quote.is_empty());
    }
}
