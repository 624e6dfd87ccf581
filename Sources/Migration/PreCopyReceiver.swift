import Foundation
import GodwitCore

/// What the destination applied from one round.
public struct RoundReceipt: Sendable, Equatable {
    public var round: Int
    public var records: UInt64 = 0
    public var dataPages = 0
    public var zeroPages = 0
    public var droppedPages = 0
    public var forgottenProcesses = 0
    public var bytes: UInt64 = 0
}

/// The destination side: applies a round's records to the PageStore.
public final class PreCopyReceiver {
    public let reader: PageRecordReader
    public let store: PageStore

    public init(reader: PageRecordReader, store: PageStore) {
        self.reader = reader
        self.store = store
    }

    /// Applies records up to and including the next roundEnd. nil: the stream ended
    /// cleanly before a new round started (the source is done).
    public func receiveRound() throws -> RoundReceipt? {
        let before = reader.bytesRead
        guard let first = try reader.next() else { return nil }
        guard first.kind == .roundStart else {
            throw GodwitError("page stream: expected the start of a round, got \(first.kind)")
        }
        var receipt = RoundReceipt(round: Int(first.round))
        receipt.records = 1
        while true {
            guard let record = try reader.next() else {
                throw GodwitError("page stream ended inside round \(receipt.round)", hint: "the source failed or the connection dropped")
            }
            guard record.round == first.round else {
                throw GodwitError("page stream: record of round \(record.round) inside round \(first.round)")
            }
            receipt.records += 1
            switch record.kind {
            case .pages:
                try record.payload.withUnsafeBytes {
                    try store.store(nsPID: record.nsPID, vaddr: record.vaddr, count: Int(record.pageCount), data: $0)
                }
                receipt.dataPages += Int(record.pageCount)
            case .zero:
                try store.storeZero(nsPID: record.nsPID, vaddr: record.vaddr, count: Int(record.pageCount))
                receipt.zeroPages += Int(record.pageCount)
            case .drop:
                store.drop(nsPID: record.nsPID, range: record.range)
                receipt.droppedPages += Int(record.pageCount)
            case .forgetProcess:
                store.forget(nsPID: record.nsPID)
                receipt.forgottenProcesses += 1
            case .roundEnd:
                let pages = UInt32(truncatingIfNeeded: receipt.dataPages + receipt.zeroPages)
                guard record.vaddr == receipt.records - 1, record.pageCount == pages else {
                    throw GodwitError("page stream: round \(receipt.round) ended with \(receipt.records - 1) records and \(pages) pages, the source sent \(record.vaddr) and \(record.pageCount)")
                }
                receipt.bytes = reader.bytesRead - before
                return receipt
            case .roundStart:
                throw GodwitError("page stream: round \(record.round) started inside round \(receipt.round)")
            }
        }
    }
}
